"""The built-in test image (the EICAR file of CSAM filtering): a generated picture whose hashes are on a
built-in list with the rule `quarantine`, category `test`, so an operator can prove the whole path works.

The picture is drawn from fixed shapes with Pillow's built-in bitmap font, so it is byte-identical on every
machine; its PDQ hash survives pict-rs's re-encoding (JPEG/WebP at lower quality, resized).

PDQ does not survive what admins do to it before uploading: a 5% crop moves it 64-70 bits away, a 10 px border
44-50, a 96 px thumbnail 32. So the test image has a second, robust matcher here (`match_bytes`), used by the
perceptual step when PDQ finds nothing. Because the one image it must find is known exactly, it compares a tiny
colour layout instead of a general-purpose hash: uniform borders are trimmed, the rest is reduced to 16x12 RGB,
and that is compared with the same reduction of every crop of the test image from 0 to 12% on each side (2%
steps, 2,401 crops, computed once). Its colour layout (red and blue quadrants, a yellow disc, black diagonals, a
white text band) survives crops, borders, re-encoding and 64 px thumbnails, where the edges PDQ relies on do not.
Measured (tests/test_testimage_robust.py prints it): the edited copies score <= ~12 (mean absolute difference,
0-255), ~700 unrelated images (scikit-image's photographs, their crops, flips and thumbnails, random shapes,
smooth noise and red/blue quadrant look-alikes) >= 40; `ROBUST_MAX_DISTANCE` = 20 sits between with a margin
on both sides.
"""

from __future__ import annotations

import functools
import io
import itertools
import warnings

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from proxy.screening.hashing import hash_bytes, pdq_hash

WIDTH, HEIGHT = 640, 480
CATEGORY = "test"
RULE = "builtin-test-image"


@functools.cache
def generate_png() -> bytes:
    image = Image.new("RGB", (WIDTH, HEIGHT), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    # A bold, asymmetric pattern: PDQ needs large-scale structure, not fine detail.
    draw.rectangle((0, 0, WIDTH // 2, HEIGHT // 2), fill=(200, 20, 20))
    draw.rectangle((WIDTH // 2, HEIGHT // 2, WIDTH, HEIGHT), fill=(20, 20, 160))
    draw.ellipse((380, 40, 600, 220), fill=(240, 200, 0), outline=(0, 0, 0), width=8)
    draw.polygon([(60, 300), (260, 300), (160, 460)], fill=(0, 140, 60))
    for x in range(0, WIDTH, 64):
        draw.line((x, 0, WIDTH - x, HEIGHT), fill=(0, 0, 0), width=5)
    font = ImageFont.load_default(size=34)
    draw.rectangle((40, 200, 600, 280), fill=(255, 255, 255), outline=(0, 0, 0), width=4)
    draw.text((60, 218), "bucketguard test image", fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


@functools.cache
def builtin_hashes() -> tuple[str, str, str]:
    """(sha256, md5, pdq) of the test image."""
    data = generate_png()
    hashes = hash_bytes(data)
    pdq = pdq_hash(data)
    assert pdq is not None
    return hashes.sha256, hashes.md5, pdq.hash_hex


#: Mean absolute difference (0-255 per channel) under which an upload is the test image; see the module docstring.
ROBUST_MAX_DISTANCE = 20.0
#: Uploads with more pixels than this are not looked at by the robust matcher (PDQ still is).
ROBUST_MAX_PIXELS = 16_000_000  # 48 MB of RGB at most, decoded in this process
_LAYOUT = (16, 12)
_WORK_SIDE = 256
_CROP_STEPS = np.linspace(0.0, 0.12, 7)
#: A border row or column: the standard deviation of each channel along it stays under this (0-255 scale).
_BORDER_TOLERANCE = 10.0


def layout(image: Image.Image) -> np.ndarray:
    """The colour layout compared: the image reduced (box filter) to 16x12 RGB, as float32."""
    return np.asarray(image.convert("RGB").resize(_LAYOUT, Image.Resampling.BOX), dtype=np.float32).ravel()


@functools.cache
def _reference_layouts() -> np.ndarray:
    """The layout of every crop of the test image, 0-12% off each side in 2% steps."""
    image = Image.open(io.BytesIO(generate_png())).convert("RGB").resize((WIDTH // 2, HEIGHT // 2),
                                                                          Image.Resampling.BOX)
    width, height = image.size
    rows = []
    for left, top, right, bottom in itertools.product(_CROP_STEPS, repeat=4):
        box = (round(left * width), round(top * height), round(width - right * width), round(height - bottom * height))
        rows.append(layout(image.crop(box)))
    return np.stack(rows)


def trim_borders(image: Image.Image) -> Image.Image:
    """Cut uniform borders: rows and columns from each edge whose pixels are all one colour (within JPEG noise),
    whatever the colour and however many nested borders; never more than half of either side."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = pixels.shape[:2]

    def uniform(line: np.ndarray) -> bool:
        return line.shape[0] > 1 and float(line.std(axis=0).max()) < _BORDER_TOLERANCE

    top, bottom, left, right = 0, height, 0, width
    changed = True
    while changed:  # one line off each side in turn, so nested borders of different colours all go
        changed = False
        if top < height // 2 and uniform(pixels[top, left:right]):
            top, changed = top + 1, True
        if bottom > height - height // 2 and uniform(pixels[bottom - 1, left:right]):
            bottom, changed = bottom - 1, True
        if left < width // 2 and uniform(pixels[top:bottom, left]):
            left, changed = left + 1, True
        if right > width - width // 2 and uniform(pixels[top:bottom, right - 1]):
            right, changed = right - 1, True
    return image.crop((left, top, right, bottom)) if (top, left, bottom, right) != (0, 0, height, width) else image


def robust_distance(image: Image.Image) -> float:
    """How far an image is from the test image (or any crop of it up to 12% a side), after trimming borders."""
    image = image.convert("RGB")
    if max(image.size) > _WORK_SIDE:
        image = image.copy()
        image.thumbnail((_WORK_SIDE, _WORK_SIDE), Image.Resampling.BOX)
    image = trim_borders(image)
    return float(np.abs(_reference_layouts() - layout(image)).mean(axis=1).min())


def match_bytes(data: bytes) -> float | None:
    """The robust distance when the bytes are the test image (cropped, bordered, thumbnailed, re-encoded); None
    when they are not, or are no decodable still image within `ROBUST_MAX_PIXELS`. Never raises on bad input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if opened.width * opened.height > ROBUST_MAX_PIXELS or min(opened.size) < 8:
                    return None
                opened.draft("RGB", (_WORK_SIDE, _WORK_SIDE))  # JPEG: decode at 1/2..1/8 scale
                image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    distance = robust_distance(image)
    return distance if distance <= ROBUST_MAX_DISTANCE else None
