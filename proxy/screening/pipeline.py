"""The screening pipeline: the one place where an upload's bytes become a verdict and its consequences.

The steps run in the order :func:`default_steps` lists; the first that decides ends it. Why this order:
  0. an empty object: zero bytes hold nothing to screen (pict-rs's `health-check` object) and never reach a list,
     the cache or the policy's `on_non_media`.
  1. allow lists first: an operator's exact SHA-256 allow (a released false positive) must win over anything
     that a model or a fuzzy match could say about the same bytes.
  2. exact block matches (lists, then the test image's exact hashes): cheapest, no decode.
  3. perceptual matches (PDQ against block lists and the test image): before the cache, so that a list change
     takes effect at once for bytes seen before (the cache keeps signals and the PDQ hash, never list decisions).
  4. non-media: bytes that are no image or video are for the policy's `on_non_media`, not for the detectors.
  5. cached signals of the same bytes from the same packs: the policy decides again, no model runs.
     Then, when federation is configured, trusted peers' attestations (proxy.federation.step, handed in by
     proxy.app): after everything local, before anything is decoded or any model runs.
  6. too large to hand to the detectors: undecodable, the policy decides.
  7. the detectors, then the policy; when they do not answer, `on_unavailable`.
Adding a step is one class in :mod:`proxy.screening.steps` and one line below. A step may also have
`early(facts)`: started as a task when the decision begins, so that its own query overlaps the decoding of the
steps before it; the step awaits it when its turn comes (the order of the decisions never changes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from proxy.screening.cache import VerdictCache
from proxy.screening.facts import Decision, Facts
from proxy.screening.hashlists import HashList, HashLists, builtin_test_list
from proxy.screening.policy import Policy
from proxy.screening.steps import (
    AllowList,
    CachedSignals,
    Detectors,
    EmptyObject,
    ExactBlock,
    NonMedia,
    PerceptualMatch,
    RunDetectors,
    Step,
    TooLarge,
)
from proxy.screening.upload import Upload, Verdict
from proxy.storage.spool import SpooledBody

__all__ = ["Decision", "Detectors", "Pipeline", "default_steps"]


def default_steps(*, policy: Policy, hashlists: HashLists, test_list: HashList, cache: VerdictCache | None,
                  detectors: RunDetectors, federation: Step | None = None) -> list[Step]:
    """The screening order, top to bottom (the module docstring says why)."""
    return [
        EmptyObject(),
        AllowList(hashlists),
        ExactBlock(hashlists, test_list),
        PerceptualMatch(hashlists, test_list),
        NonMedia(policy),
        CachedSignals(policy, detectors.current_packs),
        *([federation] if federation is not None else []),  # peers' attestations (proxy.federation.step)
        TooLarge(policy),
        detectors,
    ]


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # never "Task exception was never retrieved" for early work nobody awaited


class Pipeline:
    def __init__(self, *, policy: Policy, hashlists: HashLists, cache: VerdictCache | None,
                 detectors: Detectors | None, quarantine: Any | None = None, scan_timeout_s: float = 20.0,
                 enqueue_pending: Callable[[Upload, Decision], Awaitable[None]] | None = None,
                 on_decided: Callable[[Decision, float | None], None] | None = None,
                 federation: Step | None = None) -> None:
        self.policy = policy
        self.hashlists = hashlists
        self.test_list = builtin_test_list()
        self.cache = cache
        self.detectors = detectors
        self.quarantine = quarantine
        self.enqueue_pending = enqueue_pending
        self.on_decided = on_decided
        self.run_detectors = RunDetectors(policy, detectors, cache, scan_timeout_s)
        self.steps: Sequence[Step] = default_steps(policy=policy, hashlists=hashlists, test_list=self.test_list,
                                                   cache=cache, detectors=self.run_detectors, federation=federation)

    @property
    def detector_calls(self) -> int:
        return self.run_detectors.calls

    def current_packs(self) -> dict[str, str] | None:
        return self.run_detectors.current_packs()

    async def decide(self, body: SpooledBody, content_type: str, *, allow_defer: bool = True) -> Decision:
        facts = Facts(body, content_type, cache=self.cache, policy_version=self.policy.version,
                      allow_defer=allow_defer, detector_decode=getattr(self.detectors, "decode_spec", None))
        if body.size:
            for step in self.steps:
                early = getattr(step, "early", None)
                if early is not None:
                    facts.early[step.name] = asyncio.get_running_loop().create_task(early(facts))
        try:
            for step in self.steps:
                decision = await step.decide(facts)
                if decision is not None:
                    return decision
        finally:
            for task in facts.early.values():  # not needed after all: left to end (one bounded query), unread
                task.add_done_callback(_retrieved)
        raise AssertionError("the last step always decides")  # RunDetectors never passes

    async def act(self, upload: Upload, decision: Decision, *, actor: str = "") -> Verdict:
        """Record what the decision means (evidence, quarantine, a pending scan) and answer the gateway."""
        if decision.action in ("quarantine", "reject", "flag") and self.quarantine is not None:
            from proxy.evidence.quarantine import Catch

            catch = Catch(decision.action, upload.bucket, upload.key, upload.access_key, upload.content_type,
                          upload.size, upload.sha256, upload.md5, decision.pdq, decision.signals, decision.rule,
                          decision.category, decision.packs, decision.policy_version)
            body = upload.body.reader() if decision.action == "quarantine" else None
            record_id = await self.quarantine.record(catch, body=body,
                                                     actor=actor or decision.decided_by or upload.access_key)
        else:
            record_id = ""
        if decision.pending and self.enqueue_pending is not None:
            await self.enqueue_pending(upload, decision)
        return Verdict(decision.action, rule=decision.rule, reason=decision.reason,  # type: ignore[arg-type]
                       category=decision.category, record_id=record_id)

    async def write_failed(self, upload: Upload, verdict: Verdict, error: BaseException) -> None:
        """The front could not write a let-through upload upstream: a flag recorded for it must say that the
        object never landed (the record is written before the write, so that a crash after landing leaves one)."""
        if verdict.record_id and self.quarantine is not None:
            await self.quarantine.record_event(verdict.record_id, "write-failed", actor="proxy", status="not-landed",
                                               detail={"error": f"{type(error).__name__}: {error}"[:500]})

    async def screen(self, upload: Upload) -> Verdict:
        """The gateway's screen: decide, record the consequences, answer."""
        started = time.perf_counter()
        decision = await self.decide(upload.body, upload.content_type)
        if self.on_decided is not None:
            self.on_decided(decision, time.perf_counter() - started)
        return await self.act(upload, decision)
