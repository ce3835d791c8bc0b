"""The screening step on peers' word: after the local lists and the local cache, before the detectors.

Known-safe is looked up by exact SHA-256 only; blocks also by PDQ, through an in-memory index of the
block attestations' hashes (refreshed after every pull that stored something), whose candidates are then
re-read from the database so that a revocation or a distrust counts at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from proxy.federation.store import FederationStore
from proxy.federation.trust import Rules, judge
from proxy.screening.facts import Decision, Facts
from proxy.screening.policy import Policy


class PdqIndex:
    """Block attestations' PDQ hashes as a bit matrix; `near` is one vectorised Hamming pass."""

    def __init__(self) -> None:
        self.ids: list[tuple[str, str]] = []
        self.bits = np.zeros((0, 256), dtype=bool)

    def load(self, rows: list[tuple[str, str, str]]) -> None:
        ids, vectors = [], []
        for peer, att_id, pdq in rows:
            try:
                vectors.append(np.unpackbits(np.frombuffer(bytes.fromhex(pdq), dtype=np.uint8)).astype(bool))
            except ValueError:
                continue
            ids.append((peer, att_id))
        self.ids = ids
        self.bits = np.array(vectors, dtype=bool).reshape(len(vectors), 256)

    def near(self, pdq_hex: str, max_distance: int) -> list[tuple[str, str]]:
        if not self.ids:
            return []
        probe = np.unpackbits(np.frombuffer(bytes.fromhex(pdq_hex), dtype=np.uint8)).astype(bool)
        distances = np.count_nonzero(self.bits != probe, axis=1)
        return [self.ids[i] for i in np.flatnonzero(distances <= max_distance)]


class PeerAttestations:
    """Decides on trusted peers' attestations (see proxy.federation.trust for the rules)."""

    name = "federation"

    def __init__(self, store: FederationStore, policy: Policy, rules: Rules, *, pdq_max_distance: int) -> None:
        self.store = store
        self.policy = policy
        self.rules = rules
        self.pdq_max_distance = pdq_max_distance
        self.index = PdqIndex()
        self.decisions = 0

    async def refresh(self) -> None:
        self.index.load(await self.store.block_pdqs())

    async def decide(self, facts: Facts) -> Decision | None:
        near: list[tuple[str, str]] = []
        if self.index.ids:
            pdq = await facts.pdq()
            if pdq is not None:
                near = self.index.near(pdq.hash_hex, self.pdq_max_distance)
        rows = await self.store.usable(facts.hashes.sha256, near)
        if not rows:
            return None
        judgement = judge(rows, self.policy, self.rules, sha256=facts.hashes.sha256)
        if judgement is None:
            return None
        self.decisions += 1
        base: dict[str, Any] = await facts.base()
        return Decision(judgement.action, judgement.rule, judgement.category, self.name, judgement.reason,
                        judgement.signals, match={"federation": judgement.sources}, packs=judgement.packs,
                        decided_by="federation", **base)
