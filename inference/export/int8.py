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
- a `Recipe` may keep nodes in float: NudeNet's (YOLOv8) detection head after its last 3x3 convolutions (the
  1x1 box/class convolutions, the DFL softmax, the concatenation of box coordinates with class scores under
  one scale, the sigmoid) and two early backbone blocks stay fp32 (`yolov8_float_nodes`); the rest of the
  backbone and the neck, where the time is, run int8;
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
RECIPE_VERSION = 2
#: scikit-image's photographs (its `cat` is `chelsea` again, so it is not listed twice).
CHECK_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "coins", "hubble_deep_field",
               "retina", "immunohistochemistry", "motorcycle_left")
#: Its other pictures (not `motorcycle_right`, the other half of a check photograph's stereo pair).
CALIBRATION_NAMES = ("brick", "grass", "gravel", "logo", "moon", "page", "text", "colorwheel", "cell", "clock",
                     "microaneurysms", "checkerboard")


@dataclass(frozen=True)
class Recipe:
    """How one model is quantised: `exclude` picks the names of nodes kept in float."""

    exclude: Callable[[onnx.ModelProto], list[str]] | None = None


def yolov8_float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes of a YOLOv8 export kept in float: the detection head (`/model.22/`) except its first two 3x3
    convolutions per branch (and their SiLU), and backbone blocks 1 and 2 (the first stride-2 convolution and
    the C2f after it, at 160x160). Refuses a graph without those names (they are the export's), rather than
    guess. Blocks 1-2 were chosen by trying each backbone block in float on the check photographs: with the
    head alone in float, fp32's one 0.34 BUTTOCKS_EXPOSED false positive (explicit) fell below NudeNet's 0.25
    detection threshold; with blocks 1-2 too every signal stays within tolerance there, at about the same
    speed. Not robust beyond them: on their mirror images one face near the 0.35 face threshold flips (no
    verdict changes; tests/test_int8.py checks the verdicts on those too)."""
    head = [node.name for node in model.graph.node if node.name.startswith("/model.22/")]
    kept_int8 = re.compile(r"^/model\.22/cv[23]\.\d/cv[23]\.\d\.[01]/")
    excluded = [name for name in head if not kept_int8.match(name)]
    early = [node.name for node in model.graph.node if node.name.startswith(("/model.1/", "/model.2/"))]
    if not excluded or len(excluded) == len(head) or not early:
        raise ValueError("not a YOLOv8 export with /model.1/, /model.2/ and a /model.22/ detection head: "
                         "refusing to guess what to keep in float")
    return excluded + early


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
    """Static int8 quantisation (QDQ, per-channel weights, percentile ranges) calibrated on `calibration`."""
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
                                extra_options={"CalibPercentile": 99.999})
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
