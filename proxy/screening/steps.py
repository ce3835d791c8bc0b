"""The screening steps. Each sees the upload's facts and either decides (returns a Decision) or passes (None).

A step is a small class with a ``name`` and ``async def decide(facts) -> Decision | None``; the order they run
in is set in one place, :func:`proxy.screening.pipeline.default_steps`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from proxy.screening.cache import CachedScan, VerdictCache
from proxy.screening.facts import MAX_DETECTOR_BYTES, Decision, Facts
from proxy.screening.hashlists import HashList, HashLists, Match
from proxy.screening.policy import Policy
from proxy.screening.testimage import CATEGORY as TEST_CATEGORY
from proxy.screening.testimage import RULE as TEST_RULE

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
        match = self.hashlists.blocked(facts.hashes, None) or self.test_list.match_exact(facts.hashes)
        if match is None:
            return None
        base = {"policy_version": facts.policy_version, "sha256": facts.hashes.sha256, "md5": facts.hashes.md5,
                "pdq": ""}
        return list_decision(match, base, self.test_list)


class PerceptualMatch:
    """PDQ within the configured distance of a block list entry or the test image."""

    name = "perceptual"

    def __init__(self, hashlists: HashLists, test_list: HashList) -> None:
        self.hashlists = hashlists
        self.test_list = test_list

    async def decide(self, facts: Facts) -> Decision | None:
        pdq = await facts.pdq()
        match = (self.hashlists.blocked(facts.hashes, pdq)
                 or self.test_list.match_pdq(pdq, self.hashlists.pdq_max_distance))
        if match is None:
            return None
        return list_decision(match, await facts.base(), self.test_list)


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

    Always decides: when the detectors do not answer, the policy's `on_unavailable` does.
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
        base = await facts.base()
        result = await self._detect(await facts.data(), facts.content_type)
        if result is None:
            return self._unavailable(facts.allow_defer, base)
        signals, undecodable = dict(result.signals), bool(result.undecodable)
        packs, decided_by = result.pack_versions, getattr(result, "decided_by", "") or "detectors"
        self.learnt_packs = packs
        if self.cache is not None:
            await self.cache.put(facts.hashes.sha256, CachedScan(packs, signals, base["pdq"], undecodable, True))
        decided = self.policy.decide(signals, undecodable=undecodable)
        return Decision(decided.action, decided.rule, decided.category, "detectors", decided.reason, signals,
                        packs=packs, decided_by=decided_by, **base)

    async def _detect(self, data: bytes | None, content_type: str) -> Any | None:
        if self.detectors is None or data is None:
            return None
        self.calls += 1
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
