"""The screening pipeline: the one place where an upload's bytes become a verdict and its consequences.

Order of the steps (each can end it):
  1. the operator's allow lists (exact SHA-256 only: files and the database) -> allow
  2. exact block matches (SHA-256, MD5) in the block lists, then the built-in test image's exact hashes
  3. the verdict cache by SHA-256: signals kept from an earlier scan by the same packs (no model run)
  4. perceptual matches: PDQ within `screening.pdq_max_distance` against the block lists and the test image
  5. the detectors (in-process engine, inference service, or pull-mode workers), within the scan timeout
  6. the policy, over the signals
Exact list checks run before the cache so that a list change takes effect at once for bytes seen before;
the cache holds detector signals (and the PDQ hash), never list decisions, so nothing stale can let bytes in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.hashing import Hashes, Pdq, pdq_hash
from proxy.hashlists import HashLists, Match, builtin_test_list
from proxy.policy import Policy
from proxy.screening import Upload, Verdict
from proxy.spool import SpooledBody
from proxy.testimage import CATEGORY as TEST_CATEGORY
from proxy.testimage import RULE as TEST_RULE
from proxy.verdict_cache import CachedScan, VerdictCache

log = logging.getLogger("bucketguard.pipeline")

#: Leading bytes of the media pict-rs stores, for uploads whose Content-Type says nothing (0.4.0 sent
#: application/octet-stream for everything).
_MEDIA_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"\x1aE\xdf\xa3", b"\xff\x0a",
                b"\x00\x00\x00\x0cJXL ", b"BM")
#: Bodies are handed to the detectors in memory; larger ones are "too large to screen" (on_undecodable).
#: pict-rs's own default limit for an upload is 40 MB.
MAX_DETECTOR_BYTES = 64 * 1024 * 1024


def _head(body: SpooledBody) -> bytes:
    return body.reader().read(64)


class Detectors(Protocol):
    async def screen(self, data: bytes, content_type: str | None = None) -> Any: ...


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


class Pipeline:
    def __init__(self, *, policy: Policy, hashlists: HashLists, cache: VerdictCache | None,
                 detectors: Detectors | None, quarantine: Any | None = None, scan_timeout_s: float = 20.0,
                 enqueue_pending: Callable[[Upload, Decision], Awaitable[None]] | None = None,
                 on_decided: Callable[[Decision, float | None], None] | None = None) -> None:
        self.policy = policy
        self.hashlists = hashlists
        self.test_list = builtin_test_list()
        self.cache = cache
        self.detectors = detectors
        self.quarantine = quarantine
        self.scan_timeout_s = scan_timeout_s
        self.enqueue_pending = enqueue_pending
        self.on_decided = on_decided
        self.detector_calls = 0
        self._packs: dict[str, str] | None = None

    # ---- deciding ----------------------------------------------------------------------------------------

    def _list_decision(self, match: Match, step: str, hashes: Hashes, pdq: str) -> Decision:
        distance = f", distance {match.distance}" if match.kind == "pdq" else ""
        if match.list_name == self.test_list.name:
            return Decision("quarantine", TEST_RULE, TEST_CATEGORY, step,
                            f"the built-in test image ({match.kind}{distance})",
                            match=match.as_dict(), policy_version=self.policy.version, sha256=hashes.sha256,
                            md5=hashes.md5, pdq=pdq)
        return Decision("quarantine", f"blocklist:{match.list_name}", match.label or "blocklist", step,
                        f"{match.kind} match in {match.list_name}"
                        + (f" at distance {match.distance}" if match.kind == "pdq" else ""),
                        match=match.as_dict(), policy_version=self.policy.version, sha256=hashes.sha256,
                        md5=hashes.md5, pdq=pdq)

    async def decide(self, body: SpooledBody, content_type: str, *, allow_defer: bool = True) -> Decision:
        hashes = Hashes(body.sha256, body.md5)
        version = self.policy.version
        db_allowed, cached = await self.cache.lookup(hashes.sha256) if self.cache is not None else (False, None)
        allowed = self.hashlists.allowed(hashes)
        if allowed is None and db_allowed:
            allowed = Match("database", "sha256", hashes.sha256, "released")
        if allowed is not None:
            return Decision("allow", f"allowlist:{allowed.list_name}", "", "allowlist", "exact SHA-256 allowed",
                            match=allowed.as_dict(), policy_version=version, sha256=hashes.sha256, md5=hashes.md5)
        exact = self.hashlists.blocked(hashes, None) or self.test_list.match_exact(hashes)
        if exact is not None:
            return self._list_decision(exact, "blocklist" if exact.list_name != self.test_list.name else "testimage",
                                       hashes, "")
        fresh = cached is None or cached.packs != self.current_packs()
        fits = body.size <= MAX_DETECTOR_BYTES
        head = await asyncio.to_thread(_head, body) if cached is None else b""
        media = cached.media if cached is not None else is_media(head, content_type)
        still_image = media and not content_type.startswith("video/")
        data: bytes | None = None
        if fits and ((fresh and self.detectors is not None) or (still_image and not (cached and cached.pdq))):
            data = await asyncio.to_thread(body.read_all)
        pdq: Pdq | None = None
        if cached is not None and cached.pdq:
            pdq = Pdq(cached.pdq, 100)
        elif still_image and data is not None:
            pdq = await asyncio.to_thread(pdq_hash, data)
        pdq_hex = pdq.hash_hex if pdq else ""
        perceptual = (self.hashlists.blocked(hashes, pdq)
                      or self.test_list.match_pdq(pdq, self.hashlists.pdq_max_distance))
        if perceptual is not None:
            return self._list_decision(perceptual, "testimage" if perceptual.list_name == self.test_list.name
                                       else "blocklist", hashes, pdq_hex)
        base = {"policy_version": version, "sha256": hashes.sha256, "md5": hashes.md5, "pdq": pdq_hex}
        if not media:
            decided = self.policy.decide({}, media=False)
            return Decision(decided.action, decided.rule, decided.category, "policy", decided.reason, **base)
        if not fresh and cached is not None:
            decided = self.policy.decide(cached.signals, undecodable=cached.undecodable)
            return Decision(decided.action, decided.rule, decided.category, "cache", decided.reason,
                            dict(cached.signals), packs=cached.packs, decided_by="cache", **base)
        if not fits:
            decided = self.policy.decide({"undecodable": 1.0}, undecodable=True)
            return Decision(decided.action, decided.rule, decided.category, "policy",
                            f"over {MAX_DETECTOR_BYTES} bytes: too large to screen", {"undecodable": 1.0}, **base)
        result = await self._detect(data, content_type)
        if result is None:
            return self._unavailable(allow_defer, base)
        signals, undecodable = dict(result.signals), bool(result.undecodable)
        packs, decided_by = result.pack_versions, getattr(result, "decided_by", "") or "detectors"
        self._packs = packs
        if self.cache is not None:
            await self.cache.put(hashes.sha256, CachedScan(packs, signals, pdq_hex, undecodable, True))
        decided = self.policy.decide(signals, undecodable=undecodable)
        return Decision(decided.action, decided.rule, decided.category, "detectors", decided.reason, signals,
                        packs=packs, decided_by=decided_by, **base)

    def current_packs(self) -> dict[str, str] | None:
        """The packs the detectors run now (learnt from their answers; engines also say so up front)."""
        packs = getattr(self.detectors, "packs", None)
        if isinstance(packs, list):
            return {p["name"]: p["version"] for p in packs}
        return self._packs

    async def _detect(self, data: bytes, content_type: str) -> Any | None:
        if self.detectors is None:
            return None
        self.detector_calls += 1
        try:
            return await asyncio.wait_for(self.detectors.screen(data, content_type), self.scan_timeout_s)
        except Exception as exc:  # any failure of the detectors is "unavailable"; the policy decides what then
            log.warning("detectors unavailable: %s: %s", type(exc).__name__, exc)
            return None

    def _unavailable(self, allow_defer: bool, base: dict[str, Any]) -> Decision:
        mode = self.policy.on_unavailable
        reason = "the detectors did not answer in time"
        if mode == "refuse" or (mode == "defer" and not allow_defer):
            return Decision("refuse", "on_unavailable", "", "unavailable", reason, **base)
        if mode == "defer":
            return Decision("allow", "on_unavailable", "", "unavailable", reason + "; scanned later", pending=True,
                            **base)
        return Decision("allow", "on_unavailable", "", "unavailable", reason + "; landed unscanned", **base)

    # ---- acting ------------------------------------------------------------------------------------------

    async def act(self, upload: Upload, decision: Decision, *, actor: str = "") -> Verdict:
        if decision.action in ("quarantine", "reject", "flag") and self.quarantine is not None:
            from proxy.quarantine import Catch

            catch = Catch(decision.action, upload.bucket, upload.key, upload.access_key, upload.content_type,
                          upload.size, upload.sha256, upload.md5, decision.pdq, decision.signals, decision.rule,
                          decision.category, decision.packs, decision.policy_version)
            body = upload.body.reader() if decision.action == "quarantine" else None
            await self.quarantine.record(catch, body=body, actor=actor or decision.decided_by or upload.access_key)
        if decision.pending and self.enqueue_pending is not None:
            await self.enqueue_pending(upload, decision)
        return Verdict(decision.action, rule=decision.rule, reason=decision.reason,  # type: ignore[arg-type]
                       category=decision.category)

    async def screen(self, upload: Upload) -> Verdict:
        """The gateway's screen: decide, record the consequences, answer."""
        started = time.perf_counter()
        decision = await self.decide(upload.body, upload.content_type)
        if self.on_decided is not None:
            self.on_decided(decision, time.perf_counter() - started)
        return await self.act(upload, decision)
