"""int8 variants of pack models for the CPU, made with ONNX Runtime's static quantisation and then checked.

A variant is written and listed in the manifest (checksummed, `int8_file`) only when the detector's signals on
the check photographs (scikit-image's, shipped in its wheel) stay within `TOLERANCE` of fp32 with it; the
measured differences go into the manifest's `source.int8`.

How (each choice measured on a 2-core AVX-512 VNNI CPU, see benchmarks/inference_throughput.py):
- static quantisation, QDQ format, per-channel int8 weights, uint8 activations: ONNX Runtime fuses the QDQ
  pairs into QLinearConv and friends. Dynamic quantisation turns convolutions into ConvInteger, which the CPU
  provider runs slower than fp32;
- activation ranges calibrated on photographs *disjoint* from the check photographs (other scikit-image
  pictures and mosaics of its LFW face crops), with the percentile method (99.999%): with plain min/max
  ranges NudeNet's `explicit` and the youngest face's age moved beyond tolerance;
- a `Recipe` may rewrite the float graph first and keep nodes in float. NudeNet (YOLOv8): its DFL softmax
  runs over the last axis (`yolov8_dfl_last_axis`: ONNX Runtime's Softmax over axis 1 of [N, 16, 4, A] took
  0.69 ms of CPU, over the last axis with its transpose 0.1 ms; the fp32 outputs were bit-identical on the
  check photographs), and only the head's post-processing after its convolutions (the DFL, the box
  decoding, the class sigmoid, the concatenation of boxes with scores under one scale) stays fp32
  (`yolov8_float_nodes`); every convolution runs int8, ranges at the 99.9999th percentile. Measured on the
  check photographs: at 99.999 the head's last convolutions and backbone blocks 1-2 had to stay in float
  (recipe 2, about 20% slower) to keep `explicit` within tolerance, at 99.99 a face was lost, at 99.99999
  `explicit` and the youngest face's age moved too far;
- models at opset < 13 are converted first (per-channel scales need it), then `quant_pre_process`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

#: Largest allowed |int8 - fp32| per signal on the check photographs; `faces` must not change at all.
TOLERANCE = {"nsfw": 0.05, "explicit": 0.05, "p_minor": 0.1, "min_face_age": 3.0, "faces": 0.0}
#: Written into the manifest; a cached pack built with another recipe is rebuilt by the benchmark.
RECIPE_VERSION = 3
#: scikit-image's photographs (its `cat` is `chelsea` again, so it is not listed twice).
CHECK_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "coins", "hubble_deep_field",
               "retina", "immunohistochemistry", "motorcycle_left")
#: Its other pictures (not `motorcycle_right`, the other half of a check photograph's stereo pair).
CALIBRATION_NAMES = ("brick", "grass", "gravel", "logo", "moon", "page", "text", "colorwheel", "cell", "clock",
                     "microaneurysms", "checkerboard")


@dataclass(frozen=True)
class Recipe:
    """How one model is quantised: `rewrite` changes the float graph first (it must compute the same values),
    `exclude` picks the names of nodes kept in float, `percentile` is the calibration percentile."""

    exclude: Callable[[onnx.ModelProto], list[str]] | None = None
    rewrite: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None
    percentile: float = 99.999


def yolov8_float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes of a YOLOv8 export kept in float: the detection head's (`/model.22/`) post-processing, i.e.
    everything in it but its box and class convolution branches (`cv2.*`, `cv3.*`). Refuses a graph without
    those names (they are the export's), rather than guess."""
    head = [node.name for node in model.graph.node if node.name.startswith("/model.22/")]
    branches = re.compile(r"^/model\.22/cv[23]\.\d/")
    excluded = [name for name in head if not branches.match(name)]
    if not excluded or len(excluded) == len(head):
        raise ValueError("not a YOLOv8 export with a /model.22/ detection head and its cv2/cv3 branches: "
                         "refusing to guess what to keep in float")
    return excluded


def yolov8_dfl_last_axis(model: onnx.ModelProto) -> onnx.ModelProto:
    """YOLOv8's DFL (distribution focal loss decoding) with its softmax over the last axis: Reshape to
    [N, 4, 16, A], Transpose to [N, 16, 4, A], Softmax(axis 1), 1x1 Conv with weights 0..15 becomes Transpose
    to [N, 4, A, 16], Softmax(last axis), MatMul by the same 16 weights as a [16, 1] column; the Reshape after
    it to [N, 4, A] is unchanged. The same values (each box side's expected bin), only the summation order of
    the 16 products may differ. Refuses a graph without exactly that pattern."""
    from onnx import helper, numpy_helper

    nodes = {node.name: node for node in model.graph.node}
    transpose = nodes.get("/model.22/dfl/Transpose")
    softmax = nodes.get("/model.22/dfl/Softmax")
    conv = nodes.get("/model.22/dfl/conv/Conv")
    weights = {init.name: init for init in model.graph.initializer}

    def attribute(node: onnx.NodeProto, name: str) -> object:
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)

    if (transpose is None or softmax is None or conv is None or list(attribute(transpose, "perm") or []) != [0, 2, 1, 3]
            or attribute(softmax, "axis") != 1 or softmax.input[0] != transpose.output[0]
            or conv.input[0] != softmax.output[0] or len(conv.input) != 2 or conv.input[1] not in weights
            or tuple(weights[conv.input[1]].dims) != (1, 16, 1, 1)):
        raise ValueError("not a YOLOv8 export with a /model.22/dfl Transpose-Softmax(axis 1)-Conv(16 -> 1): "
                         "refusing to rewrite it")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the caller's model is kept
    nodes = {node.name: node for node in model.graph.node}
    transpose, softmax, conv = (nodes[n] for n in ("/model.22/dfl/Transpose", "/model.22/dfl/Softmax",
                                                    "/model.22/dfl/conv/Conv"))
    column = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == conv.input[1])).reshape(16, 1)
    column_name = "/model.22/dfl/bins"
    model.graph.initializer.append(numpy_helper.from_array(column.astype(np.float32), column_name))
    del transpose.attribute[:]
    transpose.attribute.append(helper.make_attribute("perm", [0, 1, 3, 2]))
    del softmax.attribute[:]
    softmax.attribute.append(helper.make_attribute("axis", -1))
    matmul = helper.make_node("MatMul", [softmax.output[0], column_name], list(conv.output),
                              name="/model.22/dfl/MatMul")
    position = list(model.graph.node).index(conv)
    model.graph.node.remove(conv)
    model.graph.node.insert(position, matmul)
    changed = {transpose.output[0], softmax.output[0], matmul.output[0]}
    kept = [info for info in model.graph.value_info if info.name not in changed]  # their shapes changed
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    if not any(node.input and conv.input[1] in node.input for node in model.graph.node):
        model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == conv.input[1]))
    return model


def _as_rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        array = (array / max(float(array.max()), 1) * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def check_photographs() -> list[Image.Image]:
    """The photographs the int8 signals are judged on (never used for calibration)."""
    return [_as_rgb(_skimage(name)) for name in CHECK_NAMES]


def calibration_images() -> list[Image.Image]:
    """Other scikit-image pictures plus mosaics of its 200 LFW face crops (faces at several sizes, so the face
    classes' activations are calibrated too); none of them is a check photograph."""
    import skimage.data

    images = [_as_rgb(_skimage(name)) for name in CALIBRATION_NAMES]
    faces = (skimage.data.lfw_subset() * 255).astype(np.uint8)  # 200 grey 25x25 crops
    start = 0
    for grid, side in ((1, 200), (1, 120), (2, 160), (2, 100), (3, 96), (4, 80), (5, 64), (6, 48)):
        mosaic = Image.new("RGB", (grid * side + 40, grid * side + 40), (128, 128, 128))
        for index in range(grid * grid):
            face = Image.fromarray(faces[(start + index) % len(faces)]).convert("RGB")
            mosaic.paste(face.resize((side, side), Image.Resampling.BILINEAR),
                         (20 + index % grid * side, 20 + index // grid * side))
        start += grid * grid
        images.append(mosaic)
    return images


def quantize(source: Path, destination: Path, input_name: str, calibration: Sequence[np.ndarray],
             recipe: Recipe = Recipe()) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights, percentile ranges) calibrated on `calibration`, after
    the recipe's rewrite of the float graph."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{input_name: batch} for batch in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    with tempfile.TemporaryDirectory() as scratch:
        model = onnx.load(str(source))
        if model.opset_import[0].version < 13:
            model = onnx.version_converter.convert_version(model, 13)
        if recipe.rewrite:
            model = recipe.rewrite(model)
        upgraded, prepared = Path(scratch) / "upgraded.onnx", Path(scratch) / "prepared.onnx"
        onnx.save(model, str(upgraded))
        quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
        excluded = recipe.exclude(onnx.load(str(prepared))) if recipe.exclude else []
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs a warning per integer shape tensor it leaves alone
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
                quantize_static(str(prepared), str(destination), Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.Percentile,
                                extra_options={"CalibPercentile": recipe.percentile})
        finally:
            root.setLevel(level)
    return destination


def cpu_ms_per_run(paths: Sequence[Path], input_name: str, batches: Sequence[np.ndarray],
                   rounds: int = 3) -> list[float]:
    """CPU milliseconds per run of each model on one thread, interleaved and the best of `rounds`: CPU time
    on one thread is what a busy machine's wall clock hides least."""
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = 1
    settings.log_severity_level = 3
    sessions = [ort.InferenceSession(str(path), sess_options=settings, providers=["CPUExecutionProvider"])
                for path in paths]
    for session in sessions:
        session.run(None, {input_name: batches[0]})
    best = [float("inf")] * len(sessions)
    for _ in range(rounds):
        for index, session in enumerate(sessions):
            started = time.thread_time()
            for batch in batches:
                session.run(None, {input_name: batch})
            best[index] = min(best[index], (time.thread_time() - started) * 1000 / len(batches))
    return best


def signal_differences(fp32: Sequence[dict[str, float]], int8: Sequence[dict[str, float]]) -> dict[str, float]:
    """The largest |int8 - fp32| per signal; a signal present in one run only counts as infinitely far."""
    worst: dict[str, float] = {}
    for a, b in zip(fp32, int8, strict=True):
        for name in set(a) | set(b):
            gap = abs(a[name] - b[name]) if name in a and name in b else float("inf")
            worst[name] = max(worst.get(name, 0.0), gap)
    return worst


def within_tolerance(differences: dict[str, float]) -> list[str]:
    """The signals that moved more than `TOLERANCE` allows (empty: the variant may be used)."""
    return [f"{name} moved {gap:g} (allowed {TOLERANCE.get(name, 0.0):g})" for name, gap in sorted(
        differences.items()) if gap > TOLERANCE.get(name, 0.0)]


def measure(run: Callable[[list[Image.Image]], list[dict[str, float]]], images: list[Image.Image]) -> list[dict]:
    return [run([image])[0] for image in images]
