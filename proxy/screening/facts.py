"""What the pipeline knows about one upload, gathered lazily and at most once, and what it decided.

Steps ask :class:`Facts` for what they need (the cache entry, the bytes, the PDQ hash); each fact is computed
on first use and kept, so the order of the steps decides the work done, never a flag threaded through them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from proxy.screening.cache import CachedScan, VerdictCache
from proxy.screening.hashing import Hashes, Pdq, pdq_hash
from proxy.storage.spool import SpooledBody

#: Leading bytes of the media pict-rs stores, for uploads whose Content-Type says nothing (0.4.0 sent
#: application/octet-stream for everything).
_MEDIA_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"\x1aE\xdf\xa3", b"\xff\x0a",
                b"\x00\x00\x00\x0cJXL ", b"BM")
#: Bodies are handed to the detectors in memory; larger ones are "too large to screen" (on_undecodable).
#: pict-rs's own default limit for an upload is 40 MB.
MAX_DETECTOR_BYTES = 64 * 1024 * 1024


def is_media(data_head: bytes, content_type: str) -> bool:
    if content_type.startswith(("image/", "video/")):
        return True
    if data_head[:4] == b"RIFF" and data_head[8:12] == b"WEBP":
        return True
    if data_head[4:8] == b"ftyp":
        return True
    return data_head.startswith(_MEDIA_MAGIC)


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
                 policy_version: str, allow_defer: bool) -> None:
        self.body = body
        self.content_type = content_type
        self.hashes = Hashes(body.sha256, body.md5)
        self.policy_version = policy_version
        self.allow_defer = allow_defer
        self._cache = cache
        self._lookup: tuple[bool, CachedScan | None] | None = None
        self._data: Any = _UNSET
        self._pdq: Any = _UNSET
        self._media: bool | None = None

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
        if self._media is None:
            cached = await self.cached()
            if cached is not None:
                self._media = cached.media
            else:
                head = await asyncio.to_thread(lambda: self.body.reader().read(64))
                self._media = is_media(head, self.content_type)
        return self._media

    async def still_image(self) -> bool:
        return await self.media() and not self.content_type.startswith("video/")

    async def data(self) -> bytes | None:
        """The whole body in memory, or None when it is too large to screen."""
        if self._data is _UNSET:
            self._data = await asyncio.to_thread(self.body.read_all) if self.fits else None
        return self._data

    async def pdq(self) -> Pdq | None:
        """PDQ of a still image: from the cache when known, else computed from the bytes."""
        if self._pdq is _UNSET:
            cached = await self.cached()
            if cached is not None and cached.pdq:
                self._pdq = Pdq(cached.pdq, 100)
            elif await self.still_image() and (data := await self.data()) is not None:
                self._pdq = await asyncio.to_thread(pdq_hash, data)
            else:
                self._pdq = None
        return self._pdq

    async def base(self) -> dict[str, Any]:
        """The fields every decision records."""
        pdq = await self.pdq() if self._pdq is not _UNSET else None
        return {"policy_version": self.policy_version, "sha256": self.hashes.sha256, "md5": self.hashes.md5,
                "pdq": pdq.hash_hex if pdq else ""}
