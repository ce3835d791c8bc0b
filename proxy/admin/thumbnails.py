"""Thumbnails for the review page, bounded in memory whatever the object's size.

The object is streamed into a spooled body (1 MiB in memory, the rest in a temporary file, 64 MiB read at
most) instead of being read whole into memory; the image header is read before any pixel, JPEGs are decoded
at a reduced scale (`draft`), and an image whose (reduced) canvas exceeds the pixel budget is refused without
decoding. Decoding runs in a thread, at most `THUMB_CONCURRENCY` at a time, so a page of large items cannot
pile up decodes.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

from PIL import Image, ImageFilter, ImageOps

from proxy.storage.spool import BodyTooLarge, SpooledBody

THUMB_SIDE = 224
#: Canvas pixels decoded for one thumbnail at most (after JPEG draft scaling): about 75 MB as RGB.
THUMB_MAX_PIXELS = 25_000_000
THUMB_MEMORY_BYTES = 1024 * 1024
#: Bytes read for one thumbnail at most (spooled to disk past THUMB_MEMORY_BYTES); larger items are exported.
THUMB_MAX_BYTES = 64 * 1024 * 1024
#: Thumbnails decoded at once (the caller owns the semaphore, made in the server's event loop).
THUMB_CONCURRENCY = 2


class ThumbnailError(ValueError):
    """Not an image the review page can show (not decodable, or over the decode budget)."""


async def spool(chunks: AsyncIterator[bytes], *, max_bytes: int, spool_dir: str | None) -> SpooledBody:
    """The object's bytes, at most THUMB_MEMORY_BYTES of them in memory."""
    body = SpooledBody(memory_limit=THUMB_MEMORY_BYTES, max_bytes=max(min(max_bytes, THUMB_MAX_BYTES), 1),
                       spool_dir=spool_dir)
    try:
        async for chunk in chunks:
            await body.write(chunk)
    except BodyTooLarge as exc:
        body.close()
        raise ThumbnailError(f"over {THUMB_MAX_BYTES // (1024 * 1024)} MiB: too large for a thumbnail "
                             "(export the item to see it)") from exc
    except BaseException:
        body.close()
        raise
    return body


def render(body: SpooledBody, *, reveal: bool, max_pixels: int = THUMB_MAX_PIXELS) -> bytes:
    """A small JPEG of the first frame: greyscale and heavily blurred unless `reveal`."""
    try:
        with Image.open(body.reader()) as image:
            image.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))
            if image.width * image.height > max_pixels:
                raise ThumbnailError(f"{image.width}x{image.height} is over the thumbnail decode budget")
            picture = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, ThumbnailError):
            raise
        raise ThumbnailError(f"not an image: {exc}") from exc
    picture.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if not reveal:
        picture = ImageOps.grayscale(picture).filter(ImageFilter.GaussianBlur(14)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


async def thumbnail(chunks: AsyncIterator[bytes], *, reveal: bool, max_bytes: int, spool_dir: str | None,
                    slots: asyncio.Semaphore) -> bytes:
    async with slots:
        body = await spool(chunks, max_bytes=max_bytes, spool_dir=spool_dir)
        try:
            return await asyncio.to_thread(render, body, reveal=reveal)
        finally:
            body.close()
