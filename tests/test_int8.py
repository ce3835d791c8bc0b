"""int8 variants of the nsfw-age models: built from the pinned wheels, checked against fp32, checksummed,
used only when asked for, and changing no verdict."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from inference.detectors import load_detector
from inference.export import int8, nsfw_age
from inference.packs import Pack, PackError, load_pack, sha256_file
from inference.runtime import RuntimeOptions
from proxy.screening.policy import PRESETS, load_policy, load_preset


@pytest.fixture(scope="module")
def int8_pack(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    return load_pack(nsfw_age.build(tmp_path_factory.mktemp("int8") / "p", int8=True))


@pytest.mark.slow
def test_every_model_has_a_checked_checksummed_variant(int8_pack: Pack) -> None:
    """All three models (NudeNet included) get a variant here, each measured faster on one thread, and the
    signals with all three stay within the stated tolerance on the check photographs (recorded in the pack)."""
    report = int8_pack.source["int8"]
    assert report["recipe"] == int8.RECIPE_VERSION and report["used"] and not report["refused_sets"]
    assert report["check_images"] == 11 and report["calibration_images"] == len(int8.calibration_images())
    assert sorted(report["models"]) == ["age", "nsfw", "parts"]
    for role in int8_pack.models:
        fp32_ms, int8_ms = report["cpu_ms_per_run_fp32_int8"][role]
        assert fp32_ms >= 1.1 * int8_ms, (role, fp32_ms, int8_ms)
        variant = int8_pack.int8_path(role)
        assert variant is not None and int8_pack.files[variant.name] == sha256_file(variant)
    assert set(report["max_difference"]) == set(int8.TOLERANCE)
    for name, gap in report["max_difference"].items():
        assert gap <= int8.TOLERANCE[name], (name, gap)


@pytest.mark.slow
def test_nudenet_variant_is_int8_up_to_its_post_processing(int8_pack: Pack) -> None:
    """Every convolution of the variant has int8 weights (the detection head's class/box convolutions too);
    the DFL after them stays float, rewritten with its softmax over the last axis, and that rewrite gives the
    original graph's outputs in fp32 on the check photographs."""
    import numpy as np
    import onnxruntime as ort

    model = onnx.load(str(int8_pack.int8_path("parts")))
    weights = {init.name: init.data_type for init in model.graph.initializer}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 63  # the export's 64 but the DFL's, now a MatMul
    producer = {output: node for node in model.graph.node for output in node.output}
    for conv in convs:  # each weight is int8, dequantised
        dequantise = producer[conv.input[1]]
        assert dequantise.op_type == "DequantizeLinear" and weights[dequantise.input[0]] == TensorProto.INT8
    nodes = {node.name: node for node in model.graph.node}
    softmax, matmul = nodes["/model.22/dfl/Softmax"], nodes["/model.22/dfl/MatMul"]
    assert helper.get_attribute_value(softmax.attribute[0]) == -1
    assert weights[matmul.input[1]] == TensorProto.FLOAT

    original = onnx.load(str(int8_pack.model_path("parts")))
    rewritten = int8.yolov8_dfl_last_axis(original)
    assert any(node.op_type == "Conv" and node.name == "/model.22/dfl/conv/Conv" for node in original.graph.node)
    sessions = [ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
                for graph in (original, rewritten)]
    detector = load_detector(int8_pack, RuntimeOptions("cpu"))
    batch = np.stack([detector.prepare(photo).parts for photo in int8.check_photographs()[:4]])
    before, after = (session.run(None, {"images": batch})[0] for session in sessions)
    assert before.shape == after.shape and np.abs(before - after).max() <= 1e-4


@pytest.mark.slow
def test_signals_within_tolerance_and_no_verdict_changes(int8_pack: Pack) -> None:
    """Run both ways on the check photographs: within tolerance, the variants really ran, and no preset's
    verdict (action and rule) changes there, on their mirror images or on the calibration images."""
    fp32 = load_detector(int8_pack, RuntimeOptions("cpu"))
    quantised = load_detector(int8_pack, RuntimeOptions("cpu", int8=True))
    photos = int8.check_photographs()
    expected, got = int8.measure(fp32.run, photos), int8.measure(quantised.run, photos)
    assert expected != got  # the int8 models ran
    differences = int8.signal_differences(expected, got)
    print(f"\nint8 vs fp32 on the {len(photos)} check photographs, largest |difference| per signal: "
          + ", ".join(f"{name} {gap:.4g} (allowed {int8.TOLERANCE[name]:g})"
                      for name, gap in sorted(differences.items())))
    assert not int8.within_tolerance(differences)
    without = replace(int8_pack, models={role: replace(spec, int8_file=None)
                                         for role, spec in int8_pack.models.items()})
    assert int8.measure(load_detector(without, RuntimeOptions("cpu", int8=True)).run, photos) == expected  # fp32
    policies = [load_policy(), *(load_preset(name) for name in PRESETS)]
    more = [photo.transpose(0) for photo in photos] + int8.calibration_images()
    for a, b in zip(expected + int8.measure(fp32.run, more), got + int8.measure(quantised.run, more), strict=True):
        assert [(p.decide(a).action, p.decide(a).rule) for p in policies] == \
            [(p.decide(b).action, p.decide(b).rule) for p in policies], (a, b)


@pytest.mark.slow
def test_a_tampered_variant_is_refused(int8_pack: Pack, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(int8_pack.path, tmp_path / "copy"))
    variant = copy / int8_pack.int8_path("parts").name
    tampered = bytearray(variant.read_bytes())
    tampered[-1] ^= 0xFF
    variant.write_bytes(bytes(tampered))
    with pytest.raises(PackError, match=r"checksum mismatch for nudenet-320n\.int8\.onnx"):
        load_pack(copy)


def test_check_and_calibration_images_are_disjoint() -> None:
    checks = {photo.tobytes() for photo in int8.check_photographs()}
    calibration = int8.calibration_images()
    assert len(checks) == len(int8.CHECK_NAMES) == 11 and len(calibration) >= 20
    assert not checks & {image.tobytes() for image in calibration}
    assert not set(int8.CHECK_NAMES) & set(int8.CALIBRATION_NAMES)


def test_a_graph_without_the_yolov8_names_is_refused() -> None:
    """The float-kept nodes are found by the export's names; another graph gets an error, not a guess."""
    node = helper.make_node("Relu", ["x"], ["y"], name="/model.22/Relu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="not a YOLOv8 export"):
        int8.yolov8_float_nodes(helper.make_model(graph))
    with pytest.raises(ValueError, match="not a YOLOv8 export"):
        int8.yolov8_dfl_last_axis(helper.make_model(graph))
