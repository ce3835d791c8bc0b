"""What the pipeline knows about one upload, gathered lazily and at most once, and what it decided.

Steps ask :class:`Facts` for what they need (the cache entry, the bytes, the frames' PDQ hashes); each fact is computed
on first use and kept, so the order of the steps decides the work done, never a flag threaded through them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from inference.media import DecodeSpec, Media
from proxy.screening.cache import CachedScan, VerdictCache
from proxy.screening.hashing import FrameHashes, Hashes, Pdq, frames_and_media
from proxy.screening.sniff import SNIFF_BYTES, sniff
from proxy.storage.spool import SpooledBody

#: Bodies are handed to the detectors in memory; larger ones are "too large to screen" (on_undecodable).
#: pict-rs's own default limit for an upload is 40 MB.
MAX_DETECTOR_BYTES = 64 * 1024 * 1024


@dataclass
class Decision:
    action: str
    rule: str = ""
    category: str = ""
    step: str = ""
    reason: str = ""
    signals: dict[str, float] = field(default_factory=dict)
    match: dict[str, Any] | None = None
    packs: dict[str, str] = field(default_factory=dict)
    policy_version: str = ""
    pending: bool = False
    sha256: str = ""
    md5: str = ""
    pdq: str = ""
    decided_by: str = ""


_UNSET: Any = object()


class Facts:
    """One upload's facts for the steps: hashes at once, the rest on first request."""

    def __init__(self, body: SpooledBody, content_type: str, *, cache: VerdictCache | None,
                 policy_version: str, allow_defer: bool, detector_decode: DecodeSpec | None = None) -> None:
        """`detector_decode`: how the in-process detectors decode (Engine.decode_spec); the frames' decode task
        then decodes for them too (`detector_media`)."""
        self.body = body
        self.content_type = content_type
        self.hashes = Hashes(body.sha256, body.md5)
        self.policy_version = policy_version
        self.allow_defer = allow_defer
        self._cache = cache
        self._lookup: tuple[bool, CachedScan | None] | None = None
        self._data: Any = _UNSET
        self._frames: FrameHashes | None = None
        self._media: bool | None = None
        self._detector_decode = detector_decode
        #: the bytes decoded for the detectors as `detector_decode` asks, in the same task as the PDQ hashes;
        #: None when they were not (cached frames, no in-process engine, undecodable, stopped or busy)
        self.detector_media: Media | None = None
        #: work a later step started when the decision began (Step.early), so that it overlaps the decoding
        self.early: dict[str, asyncio.Task[Any]] = {}

    @property
    def fits(self) -> bool:
        """Small enough to be read into memory for the detectors and PDQ."""
        return self.body.size <= MAX_DETECTOR_BYTES

    async def lookup(self) -> tuple[bool, CachedScan | None]:
        """(operator-allowed in the database, cached scan): one query for both."""
        if self._lookup is None:
            self._lookup = (await self._cache.lookup(self.hashes.sha256) if self._cache is not None
                            else (False, None))
        return self._lookup

    async def cached(self) -> CachedScan | None:
        return (await self.lookup())[1]

    async def media(self) -> bool:
        """Whether the bytes are an image or a video: the sniffed signature, else the decoders' own probing.
        The declared Content-Type plays no part."""
        if self._media is None:
            cached = await self.cached()
            if cached is not None:
                self._media = cached.media
            elif (await self.frames()).decodable:  # known already (the perceptual step ran): no sniff needed
                self._media = True
            else:
                head = await asyncio.to_thread(lambda: self.body.reader().read(SNIFF_BYTES))
                self._media = sniff(head) != "unknown"
        return self._media

    async def data(self) -> bytes | None:
        """The whole body in memory, or None when it is too large to screen."""
        if self._data is _UNSET:
            if not self.fits:
                self._data = None
            elif self.body.in_memory:  # no file to read: no thread needed
                self._data = self.body.read_all()
            else:
                self._data = await asyncio.to_thread(self.body.read_all)
        return self._data

    async def frames(self) -> FrameHashes:
        """PDQ of every sampled frame in its eight orientations (and a still's distance to the test image): from
        the cache when known, else decoded (in a killable worker process, within the decode budget)."""
        if self._frames is None:
            cached = await self.cached()
            if cached is not None and cached.frames is not None and cached.frames.measured:
                self._frames = cached.frames
            elif (data := await self.data()) is not None:
                spec = None if self._found_early() else self._detector_decode
                self._frames, self.detector_media = await frames_and_media(data, spec)
            else:
                self._frames = FrameHashes(False, "none", f"over {MAX_DETECTOR_BYTES} bytes: too large to decode")
        return self._frames

    def _found_early(self) -> bool:
        """A later step's early work has already found something about these bytes (a peer's attestations), so
        the detectors may well not run: the decode task then skips their frames. Only a hint: if they do run,
        they decode for themselves, as with cached frames."""
        return any(task.done() and not task.cancelled() and task.exception() is None and task.result()
                   for task in self.early.values())

    async def pdq_candidates(self) -> list[Pdq]:
        """Every PDQ hash to match against the lists (each frame, each orientation)."""
        return (await self.frames()).candidates()

    async def pdq(self) -> Pdq | None:
        """The first frame's PDQ as it is: the one hash a decision records."""
        return (await self.frames()).first

    async def base(self) -> dict[str, Any]:
        """The fields every decision records."""
        pdq = self._frames.first if self._frames is not None else None
        return {"policy_version": self.policy_version, "sha256": self.hashes.sha256, "md5": self.hashes.md5,
                "pdq": pdq.hash_hex if pdq else ""}
