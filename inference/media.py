"""Decoding uploads into a few RGB frames for the detectors, never trusting the client's Content-Type.

Images: JPEG decoded at reduced size with Pillow's `draft`, EXIF orientation applied; PNG, WebP, GIF, APNG,
AVIF (where Pillow has it). Animations and videos (PyAV, the `video` extra) are sampled to at most
`max_frames` frames spread over their length. Every bound (bytes, pixels, frames, seconds) is checked, and
anything that fails gives `undecodable` with a reason instead of an exception.
Runs in worker threads: call it off the event loop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

VIDEO_SIGNATURES = (b"\x1aE\xdf\xa3",)  # Matroska / WebM
ISO_BRANDS_VIDEO = (b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"M4V ", b"qt  ", b"dash", b"3gp4", b"3gp5")


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_frames: int = 8
    max_video_seconds: float = 3600.0


@dataclass
class Media:
    frames: list[Image.Image] = field(default_factory=list)
    undecodable: bool = False
    reason: str = ""
    kind: Literal["image", "animation", "video", "none"] = "none"
    frame_count: int = 0
    width: int = 0
    height: int = 0


def sniff(data: bytes) -> str:
    """What the bytes are, from their first bytes: 'image', 'video' or 'unknown'."""
    head = data[:64]
    if head.startswith(VIDEO_SIGNATURES):
        return "video"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        return "image" if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1") else "video"
    return "image"


def _spread(count: int, wanted: int) -> list[int]:
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [0]


def _prepare(frame: Image.Image, target: tuple[int, int]) -> Image.Image:
    frame = frame.convert("RGB")
    # Keep some resolution above the model size for detectors that crop (faces), but bound the work.
    limit = max(target) * 2
    if max(frame.size) > limit:
        frame.thumbnail((limit, limit), Image.Resampling.BILINEAR)
    return frame


def decode_image(data: bytes, limits: MediaLimits, target: tuple[int, int]) -> Media:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                return Media(undecodable=True, reason=f"{width}x{height} exceeds {limits.max_pixels} pixels")
            frames_total = getattr(image, "n_frames", 1)
            if image.format == "JPEG":
                image.draft("RGB", (max(target) * 2, max(target) * 2))
            if frames_total <= 1:
                image.load()
                frame = ImageOps.exif_transpose(image)
                return Media([_prepare(frame, target)], kind="image", frame_count=1, width=width, height=height)
            frames = []
            for index in _spread(frames_total, limits.max_frames):
                image.seek(index)
                frames.append(_prepare(image.copy(), target))
            return Media(frames, kind="animation", frame_count=frames_total, width=width, height=height)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Media(undecodable=True, reason=f"not a decodable image: {exc}")
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        return Media(undecodable=True, reason=f"corrupt or truncated image: {exc}")


def decode_video(data: bytes, limits: MediaLimits, target: tuple[int, int]) -> Media:
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        return Media(undecodable=True, reason="video decoding needs the `video` extra (PyAV)")
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.video:
                return Media(undecodable=True, reason="no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > limits.max_pixels:
                return Media(undecodable=True, reason=f"{width}x{height} video exceeds {limits.max_pixels} pixels")
            duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
            if not duration and container.duration:
                duration = container.duration / 1_000_000
            if duration > limits.max_video_seconds:
                return Media(undecodable=True, reason=f"video of {duration:.0f} s exceeds the limit")
            stream.thread_type = "AUTO"
            frames: list[Image.Image] = []
            total = stream.frames or 0
            if duration > 0 and total > limits.max_frames:
                for moment in [duration * (i + 0.5) / limits.max_frames for i in range(limits.max_frames)]:
                    container.seek(int(moment / stream.time_base), stream=stream, any_frame=False, backward=True)
                    for frame in container.decode(stream):
                        frames.append(_prepare(frame.to_image(), target))
                        break
            else:
                decoded = 0
                for frame in container.decode(stream):
                    decoded += 1
                    if len(frames) < limits.max_frames:
                        frames.append(_prepare(frame.to_image(), target))
                    if decoded >= limits.max_frames * 30:
                        break
                total = total or decoded
            if not frames:
                return Media(undecodable=True, reason="the video has no decodable frame")
            return Media(frames, kind="video", frame_count=total or len(frames), width=width, height=height)
    except (av.error.FFmpegError, OSError, ValueError, MemoryError) as exc:
        return Media(undecodable=True, reason=f"corrupt or unsupported video: {exc}")


def decode(data: bytes, content_type: str | None, limits: MediaLimits, target_size: tuple[int, int]) -> Media:
    """Frames for the detectors; `content_type` is only a hint, the bytes decide."""
    if not data:
        return Media(undecodable=True, reason="empty body")
    if len(data) > limits.max_bytes:
        return Media(undecodable=True, reason=f"{len(data)} bytes exceeds {limits.max_bytes}")
    if sniff(data) == "video":
        return decode_video(data, limits, target_size)
    media = decode_image(data, limits, target_size)
    if media.undecodable and (content_type or "").startswith("video/"):
        video = decode_video(data, limits, target_size)
        if not video.undecodable:
            return video
    return media

