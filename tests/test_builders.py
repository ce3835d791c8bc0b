"""Pack builders: the onnx.helper test pack, the nsfw-age pack from pinned wheels, the open_clip export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from inference.detectors.concepts import ConceptRules, load_evaluator
from inference.export import nsfw_age
from inference.export.clip import create_arguments
from inference.export.wheels import PinnedWheel, WheelError, extract, verify
from inference.packs import load_pack, sha256_file
from proxy.cli import main


def test_build_test_pack_from_the_cli_is_deterministic(tmp_path: Path, capsys) -> None:
    assert main(["model", "build", "test", "--out", str(tmp_path / "a")]) == 0
    assert "built test pack" in capsys.readouterr().out
    assert main(["model", "build", "test", "--out", str(tmp_path / "b")]) == 0
    a, b = load_pack(tmp_path / "a"), load_pack(tmp_path / "b")
    assert a.files == b.files  # same seed, same bytes
    model = onnx.load(str(a.model_path("image")))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(a.model_path("image")), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        out = session.run(None, {"pixels": np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert out.shape == (batch, 32)
    words = ConceptRules.load(a.table_path("rules")).words
    table = np.load(a.table_path("concepts"))
    assert table.shape == (len(words), 32)
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)


def test_fp16_variant_is_listed_checksummed_and_close(fp16_test_pack_path: Path) -> None:
    pack = load_pack(fp16_test_pack_path)
    assert pack.fp16_path("image") == pack.path / "tower.fp16.onnx"
    assert pack.files["tower.fp16.onnx"] == sha256_file(pack.path / "tower.fp16.onnx")
    pixels = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    fp32 = ort.InferenceSession(str(pack.model_path("image")), providers=["CPUExecutionProvider"])
    fp16 = ort.InferenceSession(str(pack.fp16_path("image")), providers=["CPUExecutionProvider"])
    assert fp16.get_inputs()[0].type == "tensor(float)"  # float32 in and out: detectors feed both alike
    np.testing.assert_allclose(fp16.run(None, {"pixels": pixels})[0], fp32.run(None, {"pixels": pixels})[0],
                               atol=1e-2)


def test_nsfw_age_pack_is_made_of_the_pinned_wheels(nsfw_age_pack_path: Path, capsys) -> None:
    pack = load_pack(nsfw_age_pack_path)
    assert pack.kind == "nsfw-age" and set(pack.models) == {"nsfw", "parts", "age"}
    assert {"LICENSE.open-nsfw.txt", "LICENSE.nudenet.txt", "NOTICE.age-model.md"} <= set(pack.files)
    assert pack.source["nudenet"]["sha256"] == nsfw_age.NUDENET.sha256
    for role, (inputs, shape) in {"nsfw": ("input:0", [None, 224, 224, 3]), "parts": ("images", [None, 3, 320, 320]),
                                  "age": ("images", [None, 3, 64, 64])}.items():
        session = ort.InferenceSession(str(pack.model_path(role)), providers=["CPUExecutionProvider"])
        declared = session.get_inputs()[0]
        assert declared.name == inputs == pack.models[role].input
        dims = [d if isinstance(d, int) else None for d in declared.shape]
        assert all(d is None or d == want for d, want in zip(dims[1:], shape[1:], strict=True)), (role, dims)
        assert [o.name for o in session.get_outputs()][: 1] == list(pack.models[role].outputs)
    assert main(["model", "info", str(nsfw_age_pack_path)]) == 0
    assert "checksums: all 6 files verified" in capsys.readouterr().out


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "nudenet-3.4.2-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip, not the real wheel
    with pytest.raises(WheelError, match="is not the pinned"):
        verify(wheel, nsfw_age.NUDENET)
    assert not wheel.exists()  # a bad download is not left in the cache
    wheel.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    pinned = PinnedWheel("nudenet", "3.4.2", wheel.name, sha256_file(wheel))
    assert verify(wheel, pinned) == wheel
    with pytest.raises(WheelError, match=r"has no nudenet/320n\.onnx"):
        extract(wheel, "nudenet/320n.onnx", tmp_path / "out.onnx")


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed here")
def test_clip_build_without_torch_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert main(["model", "build", "clip", "--pretrained", "none", "--out", str(tmp_path / "clip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs torch and open_clip" in err[0] and "bucketguard[export]" in err[0]


def test_fp16_is_refused_for_nsfw_age(tmp_path: Path, capsys) -> None:
    assert main(["model", "build", "nsfw-age", "--fp16", "--out", str(tmp_path / "x")]) == 2
    assert "--fp16 is for the clip and test packs" in capsys.readouterr().err


def test_openai_weights_are_built_with_quick_gelu() -> None:
    # open_clip 3.x builds ViT-L-14 with nn.GELU and only warns when OpenAI's QuickGELU weights go in
    assert create_arguments("ViT-L-14", "openai") == {"pretrained": "openai", "force_quick_gelu": True}
    assert create_arguments("ViT-B-32-quickgelu", "none") == {"pretrained": None, "force_quick_gelu": True}
    assert create_arguments("ViT-H-14", "laion2b_s32b_b79k")["force_quick_gelu"] is False


def test_the_test_pack_can_carry_either_concept_algorithm(tmp_path: Path, capsys) -> None:
    assert main(["model", "build", "test", "--concepts", "nsfw_checker", "--out", str(tmp_path / "n")]) == 0
    pack = load_pack(tmp_path / "n")
    rules = load_evaluator(pack.table_path("rules"))
    assert rules.algorithm == "nsfw_checker" and np.load(pack.table_path("concepts")).shape[0] == len(rules.words)
    assert "clip_underage_subject" in pack.signals and not pack.calibrated_for("nsfw_checker")
    assert main(["model", "build", "nsfw-age", "--concepts", "nsfw_checker", "--out", str(tmp_path / "x")]) == 2
    assert "--concepts is for the clip and test packs" in capsys.readouterr().err

