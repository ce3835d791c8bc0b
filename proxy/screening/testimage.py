"""The built-in test image (the EICAR file of CSAM filtering): a generated picture whose hashes are on a
built-in list with the rule `quarantine`, category `test`, so an operator can prove the whole path works.

The picture is drawn from fixed shapes with Pillow's built-in bitmap font, so it is byte-identical on every
machine; its PDQ hash survives pict-rs's re-encoding (JPEG/WebP at lower quality, resized).
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageDraw, ImageFont

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
