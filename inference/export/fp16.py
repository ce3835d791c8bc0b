"""float16 variants of pack models, made at pack build time for CUDA with `--fp16`.

`onnx` itself has no float16 converter; onnxruntime ships one (`onnxruntime.transformers.float16`), so no
extra package is needed. Inputs and outputs stay float32 (`keep_io_types`), so detectors feed both variants
the same tensors.
"""

from __future__ import annotations

from pathlib import Path

import onnx


class Fp16Unavailable(RuntimeError):
    pass


def fp16_name(name: str) -> str:
    """`tower.onnx` -> `tower.fp16.onnx`."""
    return name[: -len(".onnx")] + ".fp16.onnx" if name.endswith(".onnx") else name + ".fp16"


def write_fp16_variant(source: Path, destination: Path) -> Path:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # a trimmed onnxruntime build without the transformers tools
        raise Fp16Unavailable("this onnxruntime has no float16 converter (onnxruntime.transformers)") from exc
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(destination))
    return destination
