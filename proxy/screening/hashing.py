"""The one place screening hashes are computed: SHA-256 and MD5 of the bytes, PDQ of the pixels.

PDQ is computed on every frame the decoder samples (a still: its one frame; an animation: every frame up to
:data:`PDQ_FRAMES`, then that many spread over it; a video: that many spread over its length), each with its
eight dihedral variants (rotations by 90/180/270 and mirrors, one `pdqhash.compute_dihedral` call), so a
picture hidden in frame 2 of a GIF, in an MP4 or turned on its side is still matched against the lists.

Why PDQ per sampled frame and not vPDQ: vPDQ hashes a video one frame per second and matches a video against
another video by the share of frames in common; our lists hold PDQ hashes of single pictures (the test image,
block-list entries), and the question is whether ANY frame is one of them, which is PDQ of each frame. The
frames come from the same bounded decoder the detectors use (:mod:`inference.media`), so there is one way to
decode, with one budget, and `vpdq`'s own FFmpeg build is not needed.

Decoding runs in a killable worker process (:mod:`inference.decode_pool`), never in the proxy itself: bytes
over the decode budget, or stopped at its CPU-time, memory or wall limit, are undecodable. The same task measures
a still's distance to the test image (:func:`proxy.screening.testimage.robust_distance`) on the frame it decoded,
so an upload is decoded once and sent to the pool once, and the distance is kept in the verdict cache with the
hashes (a cache hit decodes nothing). With an in-process engine, the same task also decodes the bytes for its
detectors (:func:`frames_and_media_here`, the engine's own sampling and size), so the engine runs its models
without a second decode-pool task for the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.decode_pool import DecodeBusy, DecodeLimitExceeded, DecodePool, shared_pool
from inference.media import DecodeSpec, Media, MediaLimits, decode
from proxy.screening.testimage import still_distance

#: PDQ is computed on at most this many pixels per side (it works on a 64x64 downsample anyway): frames are
#: decoded for a 256x256 target, which `inference.media` keeps at up to twice that.
PDQ_MAX_SIDE = 512
#: Frames hashed per upload: every frame of an animation or video of up to this many frames; longer ones have
#: this many spread over their length (a video's at seek points: the keyframe at or before each). Hashing one
#: 512 px frame in its eight orientations costs ~5 ms, so the budget is ~0.5 s of CPU per upload at most.
PDQ_FRAMES = 100
PDQ_LIMITS = MediaLimits(max_frames=PDQ_FRAMES)
_TARGET = (PDQ_MAX_SIDE // 2, PDQ_MAX_SIDE // 2)


@dataclass(frozen=True)
class Hashes:
    sha256: str
    md5: str


@dataclass(frozen=True)
class Pdq:
    hash_hex: str  # 64 hex characters, 256 bits
    quality: int


@dataclass(frozen=True)
class FrameHashes:
    """What the bytes' pixels hash to: facts about the bytes alone, whatever type the client declared.

    `frames` holds, per sampled frame, its eight dihedral PDQ variants (the frame as it is first).
    """

    decodable: bool
    kind: str = "none"  # image | animation | video | none
    reason: str = ""
    frames: tuple[tuple[Pdq, ...], ...] = field(default_factory=tuple)
    #: refused by the decode budget or stopped at a hard limit: undecodable whatever decoder is asked
    over_budget: bool = False
    #: stopped at the wall-clock limit: may depend on the machine's load, so never cached
    stopped: bool = False
    #: not hashed because every decode worker was busy (an overload: nothing about the bytes is known)
    busy: bool = False
    #: a still's distance to the test image (testimage.still_distance, exact up to ROBUST_EXACT_UP_TO); None when
    #: not measured (not a still, or too small to look at)
    test_distance: float | None = None
    #: False for a cache entry made before the distance was kept: its bytes are decoded again, never taken as
    #: "not the test image"
    measured: bool = True

    @property
    def first(self) -> Pdq | None:
        """The first frame as it is: the PDQ an evidence record names."""
        return self.frames[0][0] if self.frames else None

    def candidates(self) -> list[Pdq]:
        """Every hash to match against the lists: each sampled frame in each of its eight orientations."""
        return [pdq for variants in self.frames for pdq in variants]

    def to_json(self) -> str:
        return json.dumps({"decodable": self.decodable, "kind": self.kind, "reason": self.reason,
                           "over_budget": self.over_budget, "test_distance": self.test_distance,
                           "frames": [[[p.hash_hex, p.quality] for p in variants] for variants in self.frames]})

    @classmethod
    def from_json(cls, text: str) -> FrameHashes:
        raw: dict[str, Any] = json.loads(text)
        frames = tuple(tuple(Pdq(str(h), int(q)) for h, q in variants) for variants in raw["frames"])
        distance = raw.get("test_distance")
        return cls(bool(raw["decodable"]), str(raw["kind"]), str(raw["reason"]), frames,
                   bool(raw.get("over_budget")), test_distance=None if distance is None else float(distance),
                   measured="test_distance" in raw)


def hash_bytes(data: bytes) -> Hashes:
    return Hashes(hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())  # noqa: S324 - content id


def _dihedral_rule() -> tuple[np.ndarray, np.ndarray]:
    """How PDQ turns its 16x16 DCT into the DCTs of the eight dihedral variants, in `pdqhash.compute_dihedral`'s
    order (as is, rotated 90/180/270, flipped along x, y, the main and the other diagonal): each coefficient
    keeps its value or is negated (where its row, column or both are odd or even, as the variant asks), and the
    rotations by 90/270 and the diagonal flips transpose the matrix. As one gather: value m of a variant's row,
    written as its hash's bits are (bit 255 first), is sign x coefficient at index `gather` of the DCT as
    `pdqhash.compute_float` gives it (flattened row by row, then reversed)."""
    rows, columns = np.indices((16, 16))
    odd_sum, even_row, even_column = (rows + columns) % 2 == 1, rows % 2 == 0, columns % 2 == 0
    none = np.zeros((16, 16), dtype=bool)
    negated = np.stack((none, even_column, odd_sum, even_row, even_row, even_column, none, odd_sum))
    transposed = np.array([False, True, False, True, False, False, True, True])[:, None, None]
    # where each coefficient (i, j) lands in its variant's bit string: bit i*16+j, or j*16+i once transposed
    landing = (255 - np.where(transposed, columns * 16 + rows, rows * 16 + columns)).reshape(8, 256)
    gather, signs = np.empty((8, 256), dtype=np.intp), np.empty((8, 256))
    np.put_along_axis(gather, landing, np.broadcast_to(255 - (rows * 16 + columns).ravel(), (8, 256)), axis=1)
    np.put_along_axis(signs, landing, np.where(negated, -1.0, 1.0).reshape(8, 256), axis=1)
    return gather, signs


_DIHEDRAL_GATHER, _DIHEDRAL_SIGNS = _dihedral_rule()


def _pdq_variants(frame: Any) -> tuple[Pdq, ...]:
    """The eight dihedral PDQ hashes of a frame, exactly `pdqhash.compute_dihedral`'s: from its one 16x16 DCT
    (`pdqhash.compute_float`, the same luma, blur, decimation and DCT), each variant's coefficients (signs
    flipped, transposed) above their median (PDQ's median: the 128th smallest of the 256) are its bits. Half the
    cost on small frames, where `compute_dihedral` spends most of its time building eight Python lists of bits.
    Frames of exactly 64x64 (where `compute_float` skips the blur `compute_dihedral` does) and under 5 px a side
    (no hash: zeros, quality 0) take `compute_dihedral` itself."""
    import pdqhash

    pixels = np.asarray(frame, dtype=np.uint8)
    if pixels.shape[:2] == (64, 64) or min(pixels.shape[:2]) < 5:
        vectors, quality = pdqhash.compute_dihedral(pixels)
        return tuple(Pdq(np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex(), int(quality)) for v in vectors)
    reversed_dct, quality = pdqhash.compute_float(pixels)
    values = _DIHEDRAL_SIGNS * np.asarray(reversed_dct)[_DIHEDRAL_GATHER]
    bits = values > np.partition(values, 127, axis=1)[:, 127:128]
    return tuple(Pdq(packed.tobytes().hex(), int(quality)) for packed in np.packbits(bits, axis=1))


def frame_hashes_here(data: bytes) -> FrameHashes:
    """Decode and hash in THIS process (and measure a still's distance to the test image): only for a
    decode-pool worker (unbounded otherwise)."""
    return _hash_media(decode(data, None, PDQ_LIMITS, _TARGET))


def _hash_media(media: Media) -> FrameHashes:
    if media.undecodable:
        return FrameHashes(False, "none", media.reason, over_budget=media.over_budget)
    variants: list[tuple[Pdq, ...]] = []
    distance: float | None = None
    for index, frame in enumerate(media.frames):
        pixels = np.asarray(frame, dtype=np.uint8)  # one array of the frame, for its PDQ and a still's distance
        variants.append(_pdq_variants(pixels))
        if index == 0 and media.kind == "image":
            distance = still_distance(frame, pixels)
    return FrameHashes(True, media.kind, "", tuple(variants), test_distance=distance)


def frames_and_media_here(data: bytes, detectors: DecodeSpec) -> tuple[FrameHashes, Media | None]:
    """`frame_hashes_here`, and the same bytes decoded for the in-process detectors as `detectors` asks (their
    own sampling and size, exactly what their engine's decode would give), in the same task: the bytes go to
    a worker once, and a small still is decoded once. No detector frames when the bytes are undecodable here
    (the detectors are not asked)."""
    media = decode(data, None, PDQ_LIMITS, _TARGET)
    hashes = _hash_media(media)
    if not hashes.decodable:
        return hashes, None
    return hashes, media if _decodes_alike(media, len(data), detectors) else detectors.decode(data)


def _decodes_alike(media: Media, size: int, detectors: DecodeSpec) -> bool:
    """Whether `detectors.decode` of these bytes gives exactly `media`'s frame: one still (no frame sampling,
    which the two decodes do differently), no side past either decode's reduction (JPEG draft and thumbnail both
    start at twice the target's larger side: below it, both keep the still whole), and within the detectors'
    own budgets (their decode would not refuse what PDQ's accepted)."""
    if media.kind != "image" or len(media.frames) != 1:
        return False
    limits, pixels = detectors.limits, media.width * media.height
    whole_up_to = 2 * min(max(_TARGET), max(detectors.target))
    return (max(media.width, media.height) <= whole_up_to and size <= limits.max_bytes
            and pixels <= min(limits.max_pixels, limits.max_total_pixels))


def _stopped(exc: DecodeLimitExceeded) -> FrameHashes:
    return FrameHashes(False, "none", str(exc), over_budget=True, stopped=exc.wall_clock)


async def frame_hashes(data: bytes, pool: DecodePool | None = None) -> FrameHashes:
    """PDQ of every sampled frame, decoded in a killable worker process."""
    return (await frames_and_media(data, None, pool))[0]


async def frames_and_media(data: bytes, detectors: DecodeSpec | None,
                           pool: DecodePool | None = None) -> tuple[FrameHashes, Media | None]:
    """PDQ of every sampled frame and, with `detectors`, the detectors' frames: one task in a killable worker
    process. A task stopped at a limit or refused by a busy pool gives no detector frames."""
    try:
        if detectors is None:
            return await (pool or shared_pool()).run(frame_hashes_here, data), None
        return await (pool or shared_pool()).run(frames_and_media_here, data, detectors)
    except DecodeLimitExceeded as exc:
        return _stopped(exc), None
    except DecodeBusy as exc:
        return FrameHashes(False, "none", f"not hashed: {exc}", busy=True), None


def frame_hashes_sync(data: bytes, pool: DecodePool | None = None) -> FrameHashes:
    """`frame_hashes` for synchronous callers (the CLI, start-up, tests)."""
    try:
        return (pool or shared_pool()).call(frame_hashes_here, data)
    except DecodeLimitExceeded as exc:
        return _stopped(exc)


def pdq_hash(data: bytes) -> Pdq | None:
    """PDQ of the first frame as it is (EXIF orientation applied), or None when the bytes are not a decodable
    image: the hash a list entry is made of."""
    return frame_hashes_sync(data).first


def hamming(a_hex: str, b_hex: str) -> int:
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()
