"""The built-in test image (the EICAR file of CSAM filtering): a generated picture whose hashes are on a
built-in list with the rule `quarantine`, category `test`, so an operator can prove the whole path works.

The picture is drawn from fixed shapes with Pillow's built-in bitmap font, so it is byte-identical on every
machine; its PDQ hash survives pict-rs's re-encoding (JPEG/WebP at lower quality, resized).

PDQ does not survive what admins do to it before uploading: a 5% crop moves it 64-70 bits away, a 10 px border
44-50, a 96 px thumbnail 32. So the test image has a second, robust matcher here (`robust_distance`), measured on
every decoded still in the same decode-pool task as its PDQ hashes (:func:`proxy.screening.hashing.frame_hashes_here`:
one decode, kept in the verdict cache with the hashes) and used by the perceptual step when PDQ finds nothing.
Because the one image it must find is known exactly, it compares a tiny
colour layout instead of a general-purpose hash: uniform borders are trimmed, the rest is reduced to 16x12 RGB,
and that is compared with the same reduction of every crop of the test image from 0 to 12% on each side (2%
steps, 2,401 crops, computed once). Its colour layout (red and blue quadrants, a yellow disc, black diagonals, a
white text band) survives crops, borders, re-encoding and 64 px thumbnails, where the edges PDQ relies on do not.
Measured (tests/test_testimage_robust.py prints it): the edited copies score <= ~12 (mean absolute difference,
0-255), ~700 unrelated images (scikit-image's photographs, their crops, flips and thumbnails, random shapes,
smooth noise and red/blue quadrant look-alikes) >= 40; `ROBUST_MAX_DISTANCE` = 20 sits between with a margin
on both sides.

Comparing with all 2,401 crops costs ~3 ms per upload, so cheaper bounds go first: the mean absolute difference
of coarser layouts (2x2, 4x3, then 8x6: blocks of the 16x12 one averaged) is never larger than that of the finer
ones (the difference of two blocks' means is at most the mean of the differences), so only the crops whose coarse
distance is within reach are compared in full. The result is the same exact minimum wherever it is within reach.
An ordinary picture is ruled out by the 2x2 bound alone; with the 256 px thumbnail, the trim and the 16x12
reduction, the whole measure costs ~0.1 ms for a 48 px still and ~0.3 ms for a 320x240 one (most of it Pillow's
thumbnail), a third to two thirds of what it cost before.
"""

from __future__ import annotations

import functools
import io
import itertools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
    from proxy.screening.hashing import hash_bytes, pdq_hash  # hashing measures robust_distance: no module cycle

    data = generate_png()
    hashes = hash_bytes(data)
    pdq = pdq_hash(data)
    assert pdq is not None
    return hashes.sha256, hashes.md5, pdq.hash_hex


#: Mean absolute difference (0-255 per channel) under which an upload is the test image; see the module docstring.
ROBUST_MAX_DISTANCE = 20.0
#: The distance the pipeline measures is exact up to here; past it, a lower bound that is past it too.
ROBUST_EXACT_UP_TO = 2 * ROBUST_MAX_DISTANCE
#: Stills smaller than this on either side are not looked at (a layout of a few pixels matches too much).
ROBUST_MIN_SIDE = 8
_LAYOUT = (16, 12)
_WORK_SIDE = 256
_CROP_STEPS = np.linspace(0.0, 0.12, 7)
#: A border row or column: the standard deviation of each channel along it stays under this (0-255 scale).
_BORDER_TOLERANCE = 10.0


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def layout(image: Image.Image) -> np.ndarray:
    """The colour layout compared: the image reduced (box filter) to 16x12 RGB, as float32."""
    return np.asarray(_rgb(image).resize(_LAYOUT, Image.Resampling.BOX), dtype=np.float32).ravel()


#: Pillow resamples 8-bit images with coefficients in fixed point of this many bits.
_PRECISION_BITS = 22


def _box_weights(size: int, first: int, last: int, out: int) -> np.ndarray:
    """The weights (out x size) with which Pillow's BOX filter reduces pixels [first, last) of a line to `out`
    values: its window and filter test in floating point, its coefficients rounded to fixed point."""
    length = last - first
    scale = length / out
    support, inverse = 0.5 * max(scale, 1.0), 1.0 / max(scale, 1.0)
    weights = np.zeros((out, size))
    for index in range(out):
        center = (index + 0.5) * scale
        start, stop = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), length)
        offsets = (np.arange(start, stop) - center + 0.5) * inverse
        taken = ((offsets > -0.5) & (offsets <= 0.5)).astype(np.float64)
        weights[index, first + start:first + stop] = np.floor(0.5 + taken / taken.sum() * (1 << _PRECISION_BITS))
    return weights


def _fixed_round(sums: np.ndarray) -> np.ndarray:
    """Pillow's rounding of a fixed-point sum back to 8 bits."""
    return np.clip(np.floor((sums + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS)), 0, 255)


@functools.cache
def _reference_layouts() -> np.ndarray:
    """The layout of every crop of the test image, 0-12% off each side in 2% steps (rows in the order of
    `itertools.product(_CROP_STEPS, repeat=4)`: left, top, right, bottom): exactly `layout(image.crop(box))` of
    each, as Pillow computes it (rows resampled, rounded, then columns, rounded), but as two matrix products over
    all the crops at once: ~50 ms instead of ~300 ms in every decode worker that starts."""
    image = Image.open(io.BytesIO(generate_png())).convert("RGB").resize((WIDTH // 2, HEIGHT // 2),
                                                                          Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float64)  # integer sums stay exact in float64
    height, width = pixels.shape[:2]
    steps, (columns, rows) = len(_CROP_STEPS), _LAYOUT
    across = np.stack([_box_weights(width, round(left * width), round(width - right * width), columns)
                       for left, right in itertools.product(_CROP_STEPS, repeat=2)])
    down = np.stack([_box_weights(height, round(top * height), round(height - bottom * height), rows)
                     for top, bottom in itertools.product(_CROP_STEPS, repeat=2)])
    lines = pixels.transpose(0, 2, 1).reshape(height * 3, width)  # (y, channel) x x
    narrow = _fixed_round(np.matmul(lines[None], across.transpose(0, 2, 1)))  # (left, right) x (y, channel) x 16
    narrow = narrow.reshape(steps * steps, height, 3, columns).transpose(0, 1, 3, 2).reshape(steps * steps, height, -1)
    both = _fixed_round(down.reshape(-1, height) @ narrow.transpose(1, 0, 2).reshape(height, -1))
    both = both.reshape(steps, steps, rows, steps, steps, columns * 3)  # top, bottom, y, left, right, (x, channel)
    return both.transpose(3, 0, 4, 1, 2, 5).reshape(steps ** 4, -1).astype(np.float32)


def _uniform(line: np.ndarray) -> bool:
    """Whether a line of pixels (n x 3, uint8) is one colour within JPEG noise: numpy's float32 standard deviation
    of each channel along it under `_BORDER_TOLERANCE`. Decided from exact integer sums (n * sum of squares -
    sum squared is n^2 times the variance), and by that very float32 computation only when the exact variance is
    within 0.1% of the tolerance's square, where float32 rounding (relative error under n x 2^-24: 0.0015% for
    the 256 px lines of the pipeline's thumbnails, 0.1% only past 16,000 px) could decide otherwise: the same
    answer for every line, at a third of the cost (tests/test_hash_task.py holds a line where they differ)."""
    count = line.shape[0]
    if count <= 1:
        return False
    values = line.astype(np.int64)
    sums = values.sum(axis=0)
    spread = int((count * np.einsum("ij,ij->j", values, values) - sums * sums).max())
    limit = _BORDER_TOLERANCE ** 2 * count * count
    if abs(spread - limit) > limit / 1000:
        return spread < limit
    return float(line.astype(np.float32).std(axis=0).max()) < _BORDER_TOLERANCE


def trim_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of an RGB image's pixels (height x width x 3, uint8) once uniform borders are cut:
    rows and columns from each edge whose pixels are all one colour (within JPEG noise), whatever the colour and
    however many nested borders; never more than half of either side."""
    height, width = pixels.shape[:2]
    top, bottom, left, right = 0, height, 0, width
    changed = True
    while changed:  # one line off each side in turn, so nested borders of different colours all go
        changed = False
        if top < height // 2 and _uniform(pixels[top, left:right]):
            top, changed = top + 1, True
        if bottom > height - height // 2 and _uniform(pixels[bottom - 1, left:right]):
            bottom, changed = bottom - 1, True
        if left < width // 2 and _uniform(pixels[top:bottom, left]):
            left, changed = left + 1, True
        if right > width - width // 2 and _uniform(pixels[top:bottom, right - 1]):
            right, changed = right - 1, True
    return left, top, right, bottom


def trim_borders(image: Image.Image, pixels: np.ndarray | None = None) -> Image.Image:
    """The image without its uniform borders (see `trim_box`); `pixels`: its RGB array, when the caller has it."""
    image = _rgb(image)
    box = trim_box(np.asarray(image) if pixels is None else pixels)
    return image.crop(box) if box != (0, 0, *image.size) else image


#: Coarser layouts compared first, coarsest first (rows x columns of blocks of the 12x16 layout).
_COARSE_GRIDS = ((2, 2), (3, 4), (6, 8))


def _coarse(layouts: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Rows of 16x12 RGB layouts reduced to `columns` x `rows` (each block of the layout averaged)."""
    height, width = _LAYOUT[1] // rows, _LAYOUT[0] // columns
    blocks = layouts.reshape(len(layouts), rows, height, columns, width, 3)
    return blocks.mean(axis=(2, 4)).reshape(len(layouts), -1)


@functools.cache
def _coarse_references(rows: int, columns: int) -> np.ndarray:
    """The reference crops' coarse layouts, one column per crop (contiguous: summing a coarse layout's few values
    is then a sum of whole rows, ~5x faster than a mean along each crop's short row)."""
    return np.ascontiguousarray(_coarse(_reference_layouts(), rows, columns).T)


def robust_distance(image: Image.Image, *, exact_up_to: float = math.inf, pixels: np.ndarray | None = None) -> float:
    """How far an image is from the test image (or any crop of it up to 12% a side), after trimming borders:
    the exact minimum when it is at most `exact_up_to`, else a lower bound that is larger than `exact_up_to`.
    `pixels`: the RGB image's pixels (height x width x 3, uint8) when the caller has them already."""
    work = _rgb(image)
    if work is not image or (pixels is not None and pixels.shape != (work.height, work.width, 3)):
        pixels = None
    if max(work.size) > _WORK_SIDE:
        work = work.copy() if work is image else work  # the caller's image stays as it is
        work.thumbnail((_WORK_SIDE, _WORK_SIDE), Image.Resampling.BOX)
        pixels = None
    query = layout(trim_borders(work, pixels))
    references = _reference_layouts()
    if math.isinf(exact_up_to):
        return float(np.abs(references - query).mean(axis=1).min())
    crops: np.ndarray | None = None  # the crops still within reach (None: all of them)
    floor = math.inf  # the smallest lower bound of the crops left out (each past exact_up_to)
    for rows, columns in _COARSE_GRIDS:
        coarse = _coarse_references(rows, columns)
        taken = coarse if crops is None else coarse[:, crops]
        bounds = np.abs(taken - _coarse(query[None], rows, columns).T).sum(axis=0) / len(coarse)
        near = bounds <= exact_up_to + 0.01  # float32 rounding: never leave out a crop that could be within reach
        if near.all():
            continue
        floor = min(floor, float(bounds[~near].min()))
        crops = np.flatnonzero(near) if crops is None else crops[near]
        if not len(crops):
            return floor
    return min(floor, float(np.abs((references if crops is None else references[crops]) - query).mean(axis=1).min()))


def still_distance(frame: Image.Image, pixels: np.ndarray | None = None) -> float | None:
    """The distance of one decoded still (a frame from inference.media; `pixels`: its RGB array if already made),
    exact up to `ROBUST_EXACT_UP_TO`; None when it is too small to be looked at."""
    if min(frame.size) < ROBUST_MIN_SIDE:
        return None
    return robust_distance(frame, exact_up_to=ROBUST_EXACT_UP_TO, pixels=pixels)


def is_test_image(distance: float | None) -> bool:
    return distance is not None and distance <= ROBUST_MAX_DISTANCE


def match_bytes(data: bytes) -> float | None:
    """The robust distance when the bytes are the test image (cropped, bordered, thumbnailed, re-encoded); None
    when they are not, or are no decodable still. Decodes IN THIS PROCESS exactly as the pipeline's decode-pool
    task does (tools and tests only). Never raises on bad input."""
    from proxy.screening.hashing import frame_hashes_here  # hashing measures robust_distance: no module cycle

    distance = frame_hashes_here(data).test_distance
    return distance if is_test_image(distance) else None
