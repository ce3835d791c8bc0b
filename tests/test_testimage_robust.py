"""The built-in test image is still caught after crops up to 10%, borders, 64 px thumbnails and re-encoding,
and nothing else is: the robust matcher's distances on edited copies and on ~700 unrelated images, printed."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import numpy as np
import pytest
import skimage
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from proxy.screening.hashing import hamming, pdq_hash
from proxy.screening.testimage import ROBUST_MAX_DISTANCE, builtin_hashes, generate_png, match_bytes

REFERENCE = Image.open(io.BytesIO(generate_png())).convert("RGB")


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w - w * right), round(h - h * bottom)))


def thumbnail(image: Image.Image, side: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((side, side))
    return copy


def edited_copies() -> Iterator[tuple[str, bytes]]:
    """What admins and software do to a picture before it is uploaded (the issue's cases and combinations)."""
    yield "jpeg q50", encode(REFERENCE, "JPEG", quality=50)
    yield "webp q40 at half size", encode(REFERENCE.resize((320, 240)), "WEBP", quality=40)
    yield "5% crop every side", encode(crop(REFERENCE, .05, .05, .05, .05))
    yield "10% crop every side", encode(crop(REFERENCE, .1, .1, .1, .1), "JPEG", quality=80)
    rng = np.random.default_rng(5)
    for index in range(24):
        sides = [float(v) for v in rng.uniform(0, 0.1, 4)]
        yield f"random crop {index} {np.round(sides, 3).tolist()}", encode(crop(REFERENCE, *sides), "JPEG", quality=85)
    for colour in ("white", "black", (128, 128, 128), (30, 60, 200)):
        yield f"10 px {colour} border", encode(ImageOps.expand(REFERENCE, 10, colour), "JPEG", quality=85)
    yield "40 px grey border then 5 px white", encode(ImageOps.expand(ImageOps.expand(REFERENCE, 40, "grey"), 5,
                                                                      "white"))
    for side in (128, 96, 80, 64):
        yield f"{side} px thumbnail", encode(thumbnail(REFERENCE, side), "JPEG", quality=70)
    yield "8% crop, 10 px border, 64 px thumbnail, jpeg q40", encode(
        thumbnail(ImageOps.expand(crop(REFERENCE, .08, .02, .05, .1), 10, "white"), 64), "JPEG", quality=40)
    yield "10% crop then 64 px webp", encode(thumbnail(crop(REFERENCE, 0, .1, .1, 0), 64), "WEBP", quality=50)


def unrelated_images() -> Iterator[Image.Image]:
    """Photographs shipped in scikit-image (and their crops, flips, rotations, thumbnails), random shapes, smooth
    noise, and look-alikes of the test image's layout (red and blue quadrants on a light ground)."""
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".png", ".jpg", ".gif")):
            continue
        image = Image.open(os.path.join(folder, name)).convert("RGB")
        yield from (image, ImageOps.mirror(image), ImageOps.flip(image), image.rotate(90, expand=True),
                    crop(image, .2, 0, 0, .2), crop(image, 0, .2, .2, 0), crop(image, .25, .25, .25, .25),
                    crop(image, 0, 0, .5, .5), crop(image, .5, .5, 0, 0), thumbnail(image, 64))
    rng = np.random.default_rng(0)
    for index in range(300):
        width, height = int(rng.integers(200, 800)), int(rng.integers(200, 800))
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 12))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
            shape = int(rng.integers(0, 3))
            if shape == 0:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
            elif shape == 1:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            else:
                draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 10)))
        yield image.filter(ImageFilter.GaussianBlur(3)) if index % 3 == 0 else image
    for _ in range(100):
        noise = rng.random((int(rng.integers(4, 16)), int(rng.integers(4, 16)), 3)) * 255
        yield Image.fromarray(noise.astype(np.uint8)).resize((400, 300), Image.Resampling.BICUBIC)
    for _ in range(20):
        image = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, 320, 240), fill=(int(rng.integers(150, 256)), int(rng.integers(0, 80)), 20))
        draw.rectangle((320, 240, 640, 480), fill=(20, int(rng.integers(0, 80)), int(rng.integers(100, 256))))
        yield image


def test_pdq_alone_loses_the_edited_copies() -> None:
    """Why the robust matcher exists: PDQ is past the default threshold (31) after a 5% crop or a border."""
    reference = pdq_hash(generate_png())
    assert reference is not None and reference.hash_hex == builtin_hashes()[2]
    for edited in (crop(REFERENCE, .05, .05, .05, .05), ImageOps.expand(REFERENCE, 10, "white")):
        found = pdq_hash(encode(edited))
        assert found is not None and hamming(found.hash_hex, reference.hash_hex) > 31


@pytest.mark.slow
def test_edited_copies_match_and_unrelated_images_do_not_with_a_margin(capsys: pytest.CaptureFixture) -> None:
    edited = {name: match_bytes(data) for name, data in edited_copies()}
    missed = [name for name, distance in edited.items() if distance is None]
    assert not missed, missed
    worst_edit = max(d for d in edited.values() if d is not None)
    from proxy.screening.testimage import robust_distance

    unrelated = np.array([robust_distance(image) for image in unrelated_images()])
    assert len(unrelated) >= 600
    closest = float(unrelated.min())
    with capsys.disabled():
        print(f"\ntest image, robust matcher: {len(edited)} edited copies <= {worst_edit:.2f}; {len(unrelated)} "
              f"unrelated images: min {closest:.2f}, 1st percentile {np.percentile(unrelated, 1):.2f}, median "
              f"{np.median(unrelated):.2f}; threshold {ROBUST_MAX_DISTANCE}")
    assert worst_edit <= ROBUST_MAX_DISTANCE - 5  # margin on the catching side
    assert closest >= ROBUST_MAX_DISTANCE + 15  # and a wider one on the false-match side


def test_reference_layouts_are_exactly_pillows_layouts_of_each_crop() -> None:
    """The 2,401 reference layouts come from two matrix products (fast, in every decode worker that starts):
    they must be, number for number, what Pillow gives for `layout(image.crop(box))` of each crop."""
    import itertools

    from proxy.screening.testimage import _CROP_STEPS, _reference_layouts, layout

    image = REFERENCE.resize((REFERENCE.width // 2, REFERENCE.height // 2), Image.Resampling.BOX)
    w, h = image.size
    boxes = [(round(left * w), round(top * h), round(w - right * w), round(h - bottom * h))
             for left, top, right, bottom in itertools.product(_CROP_STEPS, repeat=4)]
    pillow = np.stack([layout(image.crop(box)) for box in boxes])
    assert np.array_equal(_reference_layouts(), pillow)


def test_the_pipelines_bounded_distance_is_the_exact_one_within_reach() -> None:
    """The pipeline skips crops whose coarse (8x6) layout is already too far: where the exact distance is within
    ROBUST_EXACT_UP_TO it gets the very same number, elsewhere a number past ROBUST_EXACT_UP_TO (never a match)."""
    from proxy.screening.testimage import ROBUST_EXACT_UP_TO, robust_distance

    images = [Image.open(io.BytesIO(data)) for _, data in edited_copies()]
    images += list(unrelated_images())[::7]
    within = 0
    for image in images:
        exact, bounded = robust_distance(image), robust_distance(image, exact_up_to=ROBUST_EXACT_UP_TO)
        if exact <= ROBUST_EXACT_UP_TO:
            within += 1
            assert bounded == exact
        else:
            assert ROBUST_EXACT_UP_TO < bounded <= exact + 1e-4
    assert within >= 39  # every edited copy, and some unrelated images near the threshold's margin


@pytest.mark.parametrize("data", [b"", b"not an image", encode(REFERENCE)[:300],
                                  encode(Image.new("RGB", (4, 4), "red"))])
def test_bad_or_tiny_input_is_no_match_and_never_raises(data: bytes) -> None:
    assert match_bytes(data) is None


def test_edited_copies_uploaded_through_the_proxy_end_in_quarantine(proxy_factory, tmp_path) -> None:
    """The whole path: pict-rs-style PUTs through the real proxy to moto; judged by what is in the real bucket."""
    import json
    import subprocess
    import sys

    import skimage.data

    from proxy.demo.pictrs_client import PictrsClient, PictrsError
    from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY

    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\naction = "flag"\n')
    proxy = proxy_factory(pipeline=True, screening=f'policy = "{policy}"')
    client = PictrsClient(proxy.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY])
    uploads = {
        "cropped.jpg": encode(crop(REFERENCE, .09, .04, .02, .08), "JPEG", quality=80),
        "bordered.png": encode(ImageOps.expand(REFERENCE, 10, "white")),
        "thumb64.webp": encode(thumbnail(crop(REFERENCE, .05, 0, 0, .05), 64), "WEBP", quality=70),
    }
    for name, data in uploads.items():
        with pytest.raises(PictrsError) as info:
            client.put(f"edited/{name}", data, "image/jpeg")
        assert info.value.status == 403 and info.value.code == "AccessDenied", name
    benign = encode(Image.fromarray(skimage.data.astronaut()), "JPEG", quality=85)
    client.put("ok/astronaut.jpg", benign, "image/jpeg")
    assert proxy.upstream_keys() == ["ok/astronaut.jpg"]  # nothing else, staging prefixes included
    listed = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "list", "--json", "--config",
                             str(proxy.config_path)], capture_output=True, text=True, timeout=120)
    caught = json.loads(listed.stdout)
    assert sorted(item["key"] for item in caught) == sorted(f"edited/{name}" for name in uploads)
    assert {item["category"] for item in caught} == {"test"}
