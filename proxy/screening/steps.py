"""The screening steps. Each sees the upload's facts and either decides (returns a Decision) or passes (None).

A step is a small class with a ``name`` and ``async def decide(facts) -> Decision | None``; the order they run
in is set in one place, :func:`proxy.screening.pipeline.default_steps`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from inference.client import OUTAGES
from proxy.screening.cache import CachedScan, VerdictCache
from proxy.screening.facts import MAX_DETECTOR_BYTES, Decision, Facts
from proxy.screening.hashlists import HashList, HashLists, Match
from proxy.screening.policy import Policy
from proxy.screening.testimage import CATEGORY as TEST_CATEGORY
from proxy.screening.testimage import RULE as TEST_RULE
from proxy.screening.testimage import is_test_image

log = logging.getLogger("bucketguard.pipeline")


class Step(Protocol):
    name: str

    async def decide(self, facts: Facts) -> Decision | None: ...


class Detectors(Protocol):
    async def screen(self, data: bytes, content_type: str | None = None) -> Any: ...


def list_decision(match: Match, facts_base: dict[str, Any], test_list: HashList) -> Decision:
    """A block-list or test-image match: always quarantine, named by the list that matched."""
    if match.list_name == test_list.name:
        distance = f", distance {match.distance}" if match.kind == "pdq" else ""
        return Decision("quarantine", TEST_RULE, TEST_CATEGORY, "testimage",
                        f"the built-in test image ({match.kind}{distance})", match=match.as_dict(), **facts_base)
    return Decision("quarantine", f"blocklist:{match.list_name}", match.label or "blocklist", "blocklist",
                    f"{match.kind} match in {match.list_name}"
                    + (f" at distance {match.distance}" if match.kind == "pdq" else ""),
                    match=match.as_dict(), **facts_base)


class EmptyObject:
    """Zero bytes hold no picture: they land, whatever the policy says of non-media (pict-rs 0.5.17+ writes an
    empty `health-check` object on every /healthz, and a backfill must leave it be too)."""

    name = "empty"

    async def decide(self, facts: Facts) -> Decision | None:
        if facts.body.size:
            return None
        return Decision("allow", "empty", "", self.name, "an empty object carries no content",
                        policy_version=facts.policy_version, sha256=facts.hashes.sha256, md5=facts.hashes.md5)


class AllowList:
    """The operator's allow lists (files and released items in the database): exact SHA-256 only."""

    name = "allowlist"

    def __init__(self, hashlists: HashLists) -> None:
        self.hashlists = hashlists

    async def decide(self, facts: Facts) -> Decision | None:
        db_allowed, _ = await facts.lookup()
        allowed = self.hashlists.allowed(facts.hashes)
        if allowed is None and db_allowed:
            allowed = Match("database", "sha256", facts.hashes.sha256, "released")
        if allowed is None:
            return None
        return Decision("allow", f"allowlist:{allowed.list_name}", "", self.name, "exact SHA-256 allowed",
                        match=allowed.as_dict(), policy_version=facts.policy_version, sha256=facts.hashes.sha256,
                        md5=facts.hashes.md5)


class ExactBlock:
    """Exact SHA-256/MD5 matches in the block lists, then the built-in test image's exact hashes."""

    name = "exact-block"

    def __init__(self, hashlists: HashLists, test_list: HashList) -> None:
        self.hashlists = hashlists
        self.test_list = test_list

    async def decide(self, facts: Facts) -> Decision | None:
        match = self.hashlists.blocked(facts.hashes) or self.test_list.match_exact(facts.hashes)
        if match is None:
            return None
        base = {"policy_version": facts.policy_version, "sha256": facts.hashes.sha256, "md5": facts.hashes.md5,
                "pdq": ""}
        return list_decision(match, base, self.test_list)


class PerceptualMatch:
    """PDQ within the configured distance of a block list entry or the test image, for ANY candidate hash of
    the upload: every frame the decoder sampled (stills, animations, videos), each in its eight orientations
    (see :mod:`proxy.screening.hashing`). A match in any frame decides."""

    name = "perceptual"

    def __init__(self, hashlists: HashLists, test_list: HashList) -> None:
        self.hashlists = hashlists
        self.test_list = test_list

    async def decide(self, facts: Facts) -> Decision | None:
        frames = await facts.frames()
        if frames.busy:  # overloaded: nothing is known of the pixels, so nothing lands; pict-rs retries a 503
            return Decision("refuse", "decode-busy", "", "unavailable", frames.reason, **await facts.base())
        candidates = frames.candidates()
        if not candidates:
            return None
        match = (self.hashlists.blocked(facts.hashes, candidates)
                 or self.test_list.match_pdq(candidates, self.hashlists.pdq_max_distance)
                 or self._robust_test_image(frames.test_distance))
        if match is None:
            return None
        return list_decision(match, await facts.base(), self.test_list)

    def _robust_test_image(self, distance: float | None) -> Match | None:
        """The test image after crops, borders or thumbnailing, where PDQ loses it (proxy.screening.testimage):
        the distance was measured on a still's decoded frame in the same decode-pool task as its PDQ hashes."""
        if distance is None or not is_test_image(distance):
            return None
        return Match(self.test_list.name, "layout", f"{distance:.2f}", TEST_CATEGORY)


class NonMedia:
    """Bytes that are not an image or a video: the policy's `on_non_media` decides."""

    name = "non-media"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def decide(self, facts: Facts) -> Decision | None:
        if await facts.media():
            return None
        decided = self.policy.decide({}, media=False)
        return Decision(decided.action, decided.rule, decided.category, "policy", decided.reason,
                        **await facts.base())


class CachedSignals:
    """Signals kept from an earlier scan of the same bytes by the same packs: the policy decides, no model runs."""

    name = "cache"

    def __init__(self, policy: Policy, current_packs: Any) -> None:
        self.policy = policy
        self.current_packs = current_packs

    async def decide(self, facts: Facts) -> Decision | None:
        cached = await facts.cached()
        if cached is None or cached.packs != self.current_packs():
            return None
        decided = self.policy.decide(cached.signals, undecodable=cached.undecodable)
        return Decision(decided.action, decided.rule, decided.category, "cache", decided.reason,
                        dict(cached.signals), packs=cached.packs, decided_by="cache", **await facts.base())


class TooLarge:
    """Bodies over the in-memory limit cannot be handed to the detectors: undecodable, the policy decides."""

    name = "too-large"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def decide(self, facts: Facts) -> Decision | None:
        if facts.fits:
            return None
        decided = self.policy.decide({"undecodable": 1.0}, undecodable=True)
        return Decision(decided.action, decided.rule, decided.category, "policy",
                        f"over {MAX_DETECTOR_BYTES} bytes: too large to screen", {"undecodable": 1.0},
                        **await facts.base())


class RunDetectors:
    """The detectors (in-process engine, inference service or pull-mode workers), then the policy.

    Always decides, and tells three failures apart:
    - bytes over the decode budget, or whose decode was stopped at a hard limit (the proxy's own bounded
      decode says so, or the detectors answer `undecodable`): `on_undecodable`, no detector is asked;
    - a detector OUTAGE (connection refused, 5xx, queue full, every endpoint down, no answer in time):
      `on_unavailable`;
    - anything else the detectors raise on these bytes: `on_undecodable` too (fail closed; logged), never
      "unavailable", which could land the bytes unscanned.
    """

    name = "detectors"

    def __init__(self, policy: Policy, detectors: Detectors | None, cache: VerdictCache | None,
                 scan_timeout_s: float) -> None:
        self.policy = policy
        self.detectors = detectors
        self.cache = cache
        self.scan_timeout_s = scan_timeout_s
        self.calls = 0
        self.learnt_packs: dict[str, str] | None = None

    def current_packs(self) -> dict[str, str] | None:
        """The packs the detectors run now (learnt from their answers; engines also say so up front)."""
        packs = getattr(self.detectors, "packs", None)
        if isinstance(packs, list):
            return {p["name"]: p["version"] for p in packs}
        return self.learnt_packs

    async def decide(self, facts: Facts) -> Decision | None:
        frames = await facts.frames()
        base = await facts.base()
        if frames.over_budget:
            if not frames.stopped:
                await self._remember(facts, self.current_packs() or {}, {"undecodable": 1.0}, True)
            return self._undecodable(frames.reason, base)
        data = await facts.data()
        if self.detectors is None or data is None:
            return self._unavailable(facts.allow_defer, base, "no detectors are configured")
        self.calls += 1
        if facts.detector_media is not None:  # decoded for the in-process engine in the frames' own task
            screening = self.detectors.screen_decoded(facts.detector_media)  # type: ignore[attr-defined]
        else:
            screening = self.detectors.screen(data, facts.content_type)
        try:
            result = await asyncio.wait_for(screening, self.scan_timeout_s)
        except OUTAGES as exc:
            log.warning("detectors unavailable: %s: %s", type(exc).__name__, exc)
            return self._unavailable(facts.allow_defer, base, f"the detectors did not answer ({type(exc).__name__})")
        except Exception as exc:
            log.exception("the detectors failed on %s; deciding it as undecodable", facts.hashes.sha256)
            return self._undecodable(f"the detectors failed on these bytes: {type(exc).__name__}", base)
        signals, undecodable = dict(result.signals), bool(result.undecodable)
        packs, decided_by = result.pack_versions, getattr(result, "decided_by", "") or "detectors"
        if packs:
            self.learnt_packs = packs
        await self._remember(facts, packs, signals, undecodable)
        decided = self.policy.decide(signals, undecodable=undecodable)
        reason = decided.reason + (f": {result.reason}" if undecodable and getattr(result, "reason", "") else "")
        return Decision(decided.action, decided.rule, decided.category, "detectors", reason, signals,
                        packs=packs, decided_by=decided_by, **base)

    async def _remember(self, facts: Facts, packs: dict[str, str], signals: dict[str, float],
                        undecodable: bool) -> None:
        """Cache what was learnt about these bytes (frames from a stopped decode are not facts: not kept)."""
        if self.cache is None:
            return
        frames = await facts.frames()
        await self.cache.put(facts.hashes.sha256, CachedScan(packs, signals, None if frames.stopped else frames,
                                                             undecodable, await facts.media()))

    def _undecodable(self, reason: str, base: dict[str, Any]) -> Decision:
        decided = self.policy.decide({"undecodable": 1.0}, undecodable=True)
        return Decision(decided.action, decided.rule, decided.category, "undecodable", f"{decided.reason}: {reason}",
                        {"undecodable": 1.0}, **base)

    def _unavailable(self, allow_defer: bool, base: dict[str, Any], reason: str) -> Decision:
        mode = self.policy.on_unavailable
        if mode == "refuse" or (mode == "defer" and not allow_defer):
            return Decision("refuse", "on_unavailable", "", "unavailable", reason, **base)
        if mode == "defer":
            return Decision("allow", "on_unavailable", "", "unavailable", reason + "; scanned later", pending=True,
                            **base)
        return Decision("allow", "on_unavailable", "", "unavailable", reason + "; landed unscanned", **base)
