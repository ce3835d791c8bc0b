"""What every detector offers the engine, and the image-to-tensor step they share."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=64)
def _value_table(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[channel, 0..255] -> (value * scale - mean) / std, in the float32 arithmetic of a per-pixel pass."""
    values = np.arange(256, dtype=np.float32)[:, np.newaxis]
    table = (values * np.float32(scale) - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    table = np.ascontiguousarray(table.T)
    table.flags.writeable = False
    return table


def to_tensor(images: list[Image.Image], spec: ModelSpec) -> np.ndarray:
    """Images already at `spec.size` -> a float32 batch: (pixel * scale - mean) / std, in the pack's layout.

    A pixel has 256 values per channel, so each channel is one table lookup written straight into the
    batch in its layout and colour order: bit for bit the per-pixel float32 arithmetic, in a third of
    its time.
    """
    table = _value_table(float(spec.scale), tuple(float(v) for v in spec.mean), tuple(float(v) for v in spec.std))
    sources = (2, 1, 0) if spec.colour == "BGR" else (0, 1, 2)
    width, height = images[0].size
    nchw = spec.layout == "NCHW"
    batch = np.empty((len(images), 3, height, width) if nchw else (len(images), height, width, 3), dtype=np.float32)
    for index, image in enumerate(images):
        if image.size != (width, height):
            raise ValueError(f"a batch of {width}x{height} images holds one of {image.width}x{image.height}")
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        for channel, source in enumerate(sources):
            if nchw:
                np.take(table[channel], pixels[:, :, source], out=batch[index, channel], mode="clip")
            else:
                batch[index, :, :, channel] = table[channel][pixels[:, :, source]]
    return batch


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
