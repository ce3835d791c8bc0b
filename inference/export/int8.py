"""int8 variants of pack models for the CPU, made with ONNX Runtime's static quantisation and then checked.

A variant is written and listed in the manifest (checksummed, `int8_file`) only when the detector's signals on
the check photographs (scikit-image's, shipped in its wheel) stay within `TOLERANCE` of fp32 with it; the
measured differences go into the manifest's `source.int8`. Static quantisation (QLinearConv, per-channel
weights, calibrated on the same photographs) is used because dynamic quantisation turns convolutions into
ConvInteger, which ONNX Runtime's CPU provider runs slower than fp32. Models opset < 13 are converted first
(per-channel scales need it). A model whose int8 run is not faster here (NudeNet's YOLOv8n) is left fp32.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

#: Largest allowed |int8 - fp32| per signal on the check photographs; `faces` must not change at all.
TOLERANCE = {"nsfw": 0.05, "explicit": 0.05, "p_minor": 0.1, "min_face_age": 3.0, "faces": 0.0}


def check_photographs() -> list[Image.Image]:
    import skimage.data

    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "horse", "coins",
                 "hubble_deep_field", "retina", "immunohistochemistry", "motorcycle_left"):
        array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
        if array.dtype != np.uint8:
            array = (array / max(float(array.max()), 1) * 255).astype(np.uint8)
        images.append(Image.fromarray(array).convert("RGB"))
    return images


def quantize(source: Path, destination: Path, input_name: str, calibration: Sequence[np.ndarray]) -> Path:
    """Static int8 quantisation (QOperator, per-channel weights) calibrated on `calibration` batches."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
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
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs a warning per integer shape tensor it leaves alone
        try:
            quantize_static(str(prepared), str(destination), Reader(), quant_format=QuantFormat.QOperator,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
    return destination


def runs_per_second(path: Path, input_name: str, batches: Sequence[np.ndarray], rounds: int = 3) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.run(None, {input_name: batches[0]})
    started = time.perf_counter()
    for _ in range(rounds):
        for batch in batches:
            session.run(None, {input_name: batch})
    return rounds * len(batches) / (time.perf_counter() - started)


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
