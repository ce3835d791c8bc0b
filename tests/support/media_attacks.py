"""Media an attacker would upload to walk past screening: pictures hidden in later frames, turned, mislabelled,
compressed, or built to burn a decoder's time and memory. Also the misbehaving "decoders" the decode-pool
tests hand to worker processes (they must be importable by a spawned process, so they live here).
"""

from __future__ import annotations

import gzip
import io
import struct
import time

from PIL import Image

from proxy.screening.testimage import generate_png

COVER_COLOUR = (30, 120, 200)


def the_test_image() -> Image.Image:
    return Image.open(io.BytesIO(generate_png())).convert("RGB")


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def hidden_in_animation(fmt: str, picture: Image.Image | None = None) -> bytes:
    """A three-frame animation (GIF, APNG as "PNG", animated "WEBP") whose FIRST frame is a plain cover and
    whose second frame is `picture` (the test image by default)."""
    picture = picture or the_test_image()
    cover = Image.new("RGB", picture.size, COVER_COLOUR)
    buffer = io.BytesIO()
    cover.save(buffer, fmt, save_all=True, append_images=[picture, cover], duration=100, loop=0)
    return buffer.getvalue()


def hidden_in_video(picture: Image.Image | None = None, frames: int = 30, shown: range = range(10, 14), *,
                    container_format: str = "mp4", codec: str = "mpeg4", rate: int = 10,
                    gop: int | None = None) -> bytes:
    """A video (PyAV) of a plain cover with `picture` shown for a few frames in the middle; with a long
    `gop`, those frames sit between keyframes."""
    import av

    picture = picture or the_test_image()
    cover = Image.new("RGB", picture.size, COVER_COLOUR)
    out = io.BytesIO()
    with av.open(out, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = picture.width, picture.height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for index in range(frames):
            frame = av.VideoFrame.from_image(picture if index in shown else cover)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def hidden_in_mp4(picture: Image.Image | None = None, frames: int = 30, shown: range = range(10, 14)) -> bytes:
    """An MPEG-4 video of a plain cover with `picture` shown for a few frames in the middle."""
    return hidden_in_video(picture, frames, shown)


#: The seven non-identity dihedral transforms: rotations and mirrors.
TURNS = {
    "rot90": Image.Transpose.ROTATE_90,
    "rot180": Image.Transpose.ROTATE_180,
    "rot270": Image.Transpose.ROTATE_270,
    "mirror": Image.Transpose.FLIP_LEFT_RIGHT,
    "flip": Image.Transpose.FLIP_TOP_BOTTOM,
    "transpose": Image.Transpose.TRANSPOSE,
    "transverse": Image.Transpose.TRANSVERSE,
}


def turned(picture: Image.Image, turn: str, fmt: str = "JPEG") -> bytes:
    return encode(picture.transpose(TURNS[turn]), fmt, **({"quality": 80} if fmt == "JPEG" else {}))


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def bomb_gif(width: int = 7999, height: int = 7999, frames: int = 400) -> bytes:
    """The decompression bomb of issue 9: a ~9 KB GIF with a huge canvas and many one-pixel frames. Decoding
    it composites every frame onto the full canvas (75 s and gigabytes, unbounded)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for index in range(frames):
        out += b"\x21\xf9\x04\x04\x01\x00\x00\x00"  # graphic control: 10 ms, keep the canvas
        # a 1x1 image at (index % 7, 0): LZW minimum code size 2, codes clear, 0, end packed in two bytes
        out += b"\x2c" + struct.pack("<HHHHB", index % 7, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    out += b"\x3b"
    return bytes(out)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG announcing a huge canvas, with one tiny compressed row behind it."""
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


# ---- misbehaving decoders, run inside decode-pool workers ------------------------------------------------

def burn_cpu() -> None:
    """Never returns: spins until the worker's CPU-time limit kills it."""
    value = 0
    while True:
        value = (value * 31 + 7) % 1_000_003


def hog_memory(megabytes: int) -> int:
    """Touches `megabytes` of memory, far past the worker's address-space limit."""
    blocks = [bytearray(1024 * 1024) for _ in range(megabytes)]
    return len(blocks)


def sleep_for(seconds: float) -> None:
    """Uses no CPU at all: only the wall deadline stops it."""
    time.sleep(seconds)


def worker_pid() -> int:
    import os

    return os.getpid()
