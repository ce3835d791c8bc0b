"""The decode-pool hash task's fast paths give exactly what their plain statements give: the border trim (exact
integer sums, numpy's float32 standard deviation only near the tolerance) against the rule written out line by
line with that float32 standard deviation, and the eight PDQ hashes (one 16x16 DCT, signs flipped and transposed)
against `pdqhash.compute_dihedral`'s own."""

from __future__ import annotations

import numpy as np
import pdqhash
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from proxy.screening.hashing import Pdq, _pdq_variants
from proxy.screening.testimage import _BORDER_TOLERANCE, _uniform, robust_distance, trim_box

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)  # the same examples on every run


def plain_uniform(line: np.ndarray) -> bool:
    return line.shape[0] > 1 and float(line.astype(np.float32).std(axis=0).max()) < _BORDER_TOLERANCE


def plain_trim(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """The rule as stated: one line off each side in turn while it is uniform, never past half of a side."""
    values = pixels.astype(np.float32)
    height, width = values.shape[:2]
    top, bottom, left, right = 0, height, 0, width
    changed = True
    while changed:
        changed = False
        if top < height // 2 and plain_uniform(values[top, left:right]):
            top, changed = top + 1, True
        if bottom > height - height // 2 and plain_uniform(values[bottom - 1, left:right]):
            bottom, changed = bottom - 1, True
        if left < width // 2 and plain_uniform(values[top:bottom, left]):
            left, changed = left + 1, True
        if right > width - width // 2 and plain_uniform(values[top:bottom, right - 1]):
            right, changed = right - 1, True
    return left, top, right, bottom


def pixels_from(seed: int, height: int, width: int, kind: int) -> np.ndarray:
    """Noise, a flat colour, or two values alternating 20 apart (a standard deviation of exactly the tolerance,
    or a hair either side of it once one pixel moves): the lines where float32 rounding could decide."""
    rng = np.random.default_rng(seed)
    if kind == 0:
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == 1:
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
    low = int(rng.integers(1, 235))
    values = np.where(rng.integers(0, 2, (height, width, 3)) == 1, low + 20, low).astype(np.uint8)
    if kind == 3 and values.size:
        values[rng.integers(0, height), rng.integers(0, width), rng.integers(0, 3)] += rng.choice([-1, 1])
    return values


@st.composite
def bordered(draw: st.DrawFn) -> np.ndarray:
    """A picture inside up to three nested borders (each its own colour, width per side, and noise)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pixels = pixels_from(seed, draw(st.integers(1, 30)), draw(st.integers(1, 30)), draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(0, 3))):
        top, bottom, left, right = (draw(st.integers(0, 6)) for _ in range(4))
        height, width = pixels.shape[:2]
        frame = pixels_from(int(rng.integers(0, 2**32)), height + top + bottom, width + left + right,
                            draw(st.integers(1, 3)))
        noise = draw(st.sampled_from([0, 3, 12]))
        if noise:
            frame = np.clip(frame.astype(np.int16) + rng.integers(-noise, noise + 1, frame.shape), 0, 255)
        frame[top:top + height, left:left + width] = pixels
        pixels = frame.astype(np.uint8)
    return pixels


@PROPERTY
@given(bordered())
def test_trim_is_the_plain_rule(pixels: np.ndarray) -> None:
    assert trim_box(pixels) == plain_trim(pixels)


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(0, 300), st.integers(0, 3))
@example(0, 2, 2)
@example(0, 256, 2)
def test_uniform_is_numpys_float32_standard_deviation_under_the_tolerance(seed: int, length: int, kind: int) -> None:
    line = pixels_from(seed, 1, length, kind)[0]
    assert _uniform(line) == plain_uniform(line)
    column = pixels_from(seed, length, 3, kind)[:, 1]  # a strided column, as the trim reads one
    assert _uniform(column) == plain_uniform(column)


#: Fifty values whose exact variance is 100 (a standard deviation of exactly the tolerance: not under it), which
#: numpy's float32 standard deviation puts a hair under 10: the rule is the float32 one, so this line is uniform.
AT_THE_TOLERANCE = [131, 135, 119, 137, 113, 143, 125, 137, 135, 114, 129, 122, 131, 116, 138, 139, 125, 156, 116,
                    122, 128, 127, 122, 140, 130, 121, 124, 103, 146, 118, 130, 131, 124, 123, 117, 105, 137, 132,
                    121, 130, 126, 123, 127, 139, 131, 117, 136, 121, 134, 134]


def test_a_line_at_the_tolerance_is_decided_as_float32_decides() -> None:
    values = np.array(AT_THE_TOLERANCE, dtype=np.int64)
    assert len(values) * (values * values).sum() - values.sum() ** 2 == 100 * len(values) ** 2  # exactly 10
    line = np.repeat(values.astype(np.uint8)[:, None], 3, axis=1)
    assert plain_uniform(line) is True
    assert _uniform(line) is True
    pixels = np.random.default_rng(0).integers(0, 256, (9, 50, 3), dtype=np.uint8)  # no line of noise is uniform
    pixels[0] = line
    assert trim_box(pixels) == plain_trim(pixels) == (0, 1, 50, 9)  # the top row goes as a border


def dihedral(pixels: np.ndarray) -> tuple[Pdq, ...]:
    vectors, quality = pdqhash.compute_dihedral(pixels)
    return tuple(Pdq(np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex(), int(quality)) for v in vectors)


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(1, 90), st.integers(1, 90), st.booleans())
@example(1, 64, 64, True)  # pdqhash's compute_float skips its blur at exactly 64x64: the dihedral call is taken
@example(2, 64, 64, False)
@example(3, 4, 10, False)  # under 5 px: no hash (zeros, quality 0)
@example(4, 5, 5, True)
def test_pdq_variants_are_pdqhash_compute_dihedral(seed: int, height: int, width: int, blocky: bool) -> None:
    """Blocky frames (a few flat colours) give many equal DCT coefficients: the median and ties must match."""
    rng = np.random.default_rng(seed)
    if blocky:
        small = rng.integers(0, 256, (int(rng.integers(1, 5)), int(rng.integers(1, 5)), 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST))
    else:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert _pdq_variants(Image.fromarray(pixels)) == dihedral(pixels)


def test_the_distance_leaves_the_callers_image_as_it_is() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    before = image.tobytes()
    robust_distance(image)
    assert image.size == (400, 300) and image.tobytes() == before


def test_the_tasks_one_array_per_frame_gives_the_same_distance() -> None:
    """frame_hashes_here hands the frame's array it made for PDQ to the distance: the same number as without it
    (a bordered 120 px copy of the test image, within reach, and noise, past it)."""
    import io

    from PIL import ImageOps

    from proxy.screening.testimage import ROBUST_MAX_DISTANCE, generate_png, still_distance

    copy = Image.open(io.BytesIO(generate_png())).convert("RGB")
    copy.thumbnail((120, 120))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    for frame in (ImageOps.expand(copy, 6, "white"), noise):
        alone = still_distance(frame)
        assert alone is not None and still_distance(frame, np.asarray(frame)) == alone
    assert still_distance(ImageOps.expand(copy, 6, "white"), None) <= ROBUST_MAX_DISTANCE
