"""Decoding uploads into a few RGB frames for the detectors and for PDQ, never trusting the client's Content-Type.

Images: JPEG decoded at reduced size with Pillow's `draft`, EXIF orientation applied; PNG, WebP, GIF, APNG,
AVIF (where Pillow has it). Animations and videos (PyAV, the `video` extra) are sampled to at most
`max_frames` frames spread over their length. Every bound (bytes, pixels per frame, pixels over all the frames
that must be decoded, frames, seconds) is checked from the headers BEFORE any pixel is decoded, and anything
that fails gives `undecodable` with a reason instead of an exception. The bytes decide which decoder runs:
the declared type is ignored, and when one decoder cannot open the bytes the other is tried.

These functions are pure and unbounded in CPU time and memory once the checks pass: run them through
:mod:`inference.decode_pool` (killable processes with hard limits), never on the event loop or in a thread.
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
    max_pixels: int = 64_000_000  # one frame's canvas
    #: canvas pixels x frames that must be decoded to reach the last sampled one (animations decode every
    #: frame in order; a video's sampled frames): 7999x7999 x 400 one-pixel GIF frames is 25.6e9, refused.
    max_total_pixels: int = 1_000_000_000
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
    over_budget: bool = False  # refused from its headers, before decoding: no other decoder is tried
    unrecognised: bool = False  # this decoder does not know the format at all: the other one is asked


@dataclass(frozen=True)
class DecodeSpec:
    """How one consumer wants bytes decoded (its bounds and the size its models aim for): picklable, so that
    another consumer's decode-pool task can decode for it too (see `Engine.decode_spec`)."""

    limits: MediaLimits
    target: tuple[int, int]

    def decode(self, data: bytes) -> Media:
        """The frames `decode` gives for this spec (only in a decode-pool worker: unbounded otherwise)."""
        return decode(data, None, self.limits, self.target)


def _over_budget(reason: str) -> Media:
    return Media(undecodable=True, reason=reason, over_budget=True)


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
                return _over_budget(f"{width}x{height} exceeds the decode budget of {limits.max_pixels} pixels "
                                    "per frame")
            frames_total = getattr(image, "n_frames", 1)
            if width * height * frames_total > limits.max_total_pixels:
                return _over_budget(f"{width}x{height} x {frames_total} frames exceeds the decode budget of "
                                    f"{limits.max_total_pixels} pixels")
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
    except UnidentifiedImageError as exc:
        return Media(undecodable=True, reason=f"not a decodable image: {exc}", unrecognised=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _over_budget(f"not a decodable image: {exc}")
    except MemoryError:
        return _over_budget("decoding needed more memory than the decoder may use")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return Media(undecodable=True, reason=f"corrupt or truncated image: {exc}")


def decode_video(data: bytes, limits: MediaLimits, target: tuple[int, int]) -> Media:
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        return Media(undecodable=True, reason="video decoding needs the `video` extra (PyAV)")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return Media(undecodable=True, reason=f"not a decodable video: {exc}", unrecognised=True)
    try:
        with container:
            if not container.streams.video:
                return Media(undecodable=True, reason="no video stream", unrecognised=True)
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > limits.max_pixels:
                return _over_budget(f"{width}x{height} video exceeds the decode budget of {limits.max_pixels} "
                                    "pixels per frame")
            duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
            if not duration and container.duration:
                duration = container.duration / 1_000_000
            if duration > limits.max_video_seconds:
                return _over_budget(f"video of {duration:.0f} s exceeds the limit")
            rate = float(stream.average_rate) if stream.average_rate else 0.0
            total = stream.frames or (int(duration * rate) if duration and rate else 0)
            # In order when every frame up to the last sampled one fits the budget: exactly the sampled frames.
            # Longer videos: the keyframe at or before each sampled moment (one decode per sample; a frame shown
            # only between keyframes of such a video can be missed: the price of a bounded decode).
            in_order = not duration or total <= limits.max_frames or width * height * total <= limits.max_total_pixels
            # decoded: in order, every frame up to the last sampled one (the first max_frames when the length is
            # unknown); seeking, at least one per sampled moment
            to_decode = (total or limits.max_frames) if in_order else limits.max_frames
            if width * height * to_decode > limits.max_total_pixels:
                return _over_budget(f"{width}x{height} x {to_decode} frames exceeds the decode budget of "
                                    f"{limits.max_total_pixels} pixels")
            stream.codec_context.thread_count = 1  # one thread: the decode process has a hard memory limit
            frames: list[Image.Image] = []
            if in_order:
                wanted = set(_spread(total, limits.max_frames)) if total > limits.max_frames else None
                last = max(wanted) if wanted else None
                for index, frame in enumerate(container.decode(stream)):
                    if wanted is None or index in wanted:
                        frames.append(_prepare(frame.to_image(), target))
                    if len(frames) >= limits.max_frames or (last is not None and index >= last):
                        break
                total = max(total, len(frames))
            else:
                for moment in [duration * (i + 0.5) / limits.max_frames for i in range(limits.max_frames)]:
                    container.seek(int(moment / stream.time_base), stream=stream, any_frame=False, backward=True)
                    for frame in container.decode(stream):
                        frames.append(_prepare(frame.to_image(), target))
                        break
            if not frames:
                return Media(undecodable=True, reason="the video has no decodable frame")
            return Media(frames, kind="video", frame_count=total or len(frames), width=width, height=height)
    except MemoryError:
        return _over_budget("decoding needed more memory than the decoder may use")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return Media(undecodable=True, reason=f"corrupt or unsupported video: {exc}")


def decode(data: bytes, content_type: str | None, limits: MediaLimits, target_size: tuple[int, int]) -> Media:
    """Sampled frames of the bytes. `content_type` is ignored (kept for the callers' one signature): the bytes
    pick the decoder tried first, and when it cannot open them the other decoder has its say, so a video
    declared as an image (or the reverse, or as anything else) is decoded all the same."""
    del content_type
    if not data:
        return Media(undecodable=True, reason="empty body")
    if len(data) > limits.max_bytes:
        return _over_budget(f"{len(data)} bytes exceeds {limits.max_bytes}")
    first, second = (decode_video, decode_image) if sniff(data) == "video" else (decode_image, decode_video)
    try:
        media = first(data, limits, target_size)
        if media.unrecognised:
            other = second(data, limits, target_size)
            if not other.undecodable or other.over_budget:
                return other
        return media
    except Exception as exc:
        # Hostile bytes reach corners of the decoders' plugins (struct, index errors): whatever a decoder
        # raises, these bytes are undecodable, never an escaping exception.
        return Media(undecodable=True, reason=f"the decoder failed: {type(exc).__name__}: {exc}")

