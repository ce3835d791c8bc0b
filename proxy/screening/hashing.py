"""The one place screening hashes are computed: SHA-256 and MD5 of the bytes, PDQ of the pixels."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

#: PDQ is computed on at most this many pixels per side (it works on a 64x64 downsample anyway).
PDQ_MAX_SIDE = 512
MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class Hashes:
    sha256: str
    md5: str


@dataclass(frozen=True)
class Pdq:
    hash_hex: str  # 64 hex characters, 256 bits
    quality: int


def hash_bytes(data: bytes) -> Hashes:
    return Hashes(hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())  # noqa: S324 - content id


def pdq_hash(data: bytes) -> Pdq | None:
    """PDQ of the first frame (EXIF orientation applied), or None when the bytes are not a decodable image."""
    import pdqhash

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            return None
        if image.format == "JPEG":
            image.draft("RGB", (PDQ_MAX_SIDE, PDQ_MAX_SIDE))
        image = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    image.thumbnail((PDQ_MAX_SIDE, PDQ_MAX_SIDE), Image.Resampling.BILINEAR)
    vector, quality = pdqhash.compute(np.asarray(image, dtype=np.uint8))
    bits = np.packbits(np.asarray(vector, dtype=np.uint8))
    return Pdq(bits.tobytes().hex(), int(quality))


def hamming(a_hex: str, b_hex: str) -> int:
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()
