"""What every detector offers the engine, and the image-to-tensor step they share."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from PIL import Image

from inference.packs import ModelSpec


class Detector(Protocol):
    name: str
    pack_name: str
    pack_version: str
    provider: str
    #: The size decoding should aim for (JPEG draft), as (width, height).
    input_size: tuple[int, int]

    def prepare(self, frame: Image.Image) -> Any:
        """Per-frame preprocessing (resize, crop, to array): runs in the decode threads, in parallel."""
        ...

    def infer(self, prepared: list[Any]) -> list[dict[str, float]]:
        """One signals dict per prepared frame, computed in as few model calls as possible."""
        ...

    def run(self, frames: list[Image.Image]) -> list[dict[str, float]]:
        """prepare + infer, for callers without a batcher."""
        ...


def to_tensor(images: list[Image.Image], spec: ModelSpec) -> np.ndarray:
    """Images already at `spec.size` -> a float32 batch: (pixel * scale - mean) / std, in the pack's layout."""
    batch = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    if spec.colour == "BGR":
        batch = batch[..., ::-1]
    batch = (batch * np.float32(spec.scale) - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(
        spec.std, dtype=np.float32)
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)


def resize_center_crop(image: Image.Image, size: tuple[int, int], *, short_side: int | None = None,
                       resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize so the short side is `short_side` (default: the crop size), then crop the centre."""
    width, height = size
    target = short_side or max(width, height)
    scale = target / min(image.width, image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           resample)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))
