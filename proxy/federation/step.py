"""The screening step on peers' word: after the local lists and the local cache, before the detectors.

Known-safe is looked up by exact SHA-256 only; blocks also by PDQ, through an in-memory index of the
block attestations' hashes (refreshed after every pull that stored something), whose candidates are then
re-read from the database so that a revocation or a distrust counts at once. Every attestation's own
signature is verified (once per process) before it counts, whatever the page it came in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from proxy.federation.keys import BadSignature, KeyFileError, PublicKey, token_kid, verify
from proxy.federation.store import FederationStore
from proxy.federation.trust import Rules, judge
from proxy.screening.facts import Decision, Facts
from proxy.screening.hashing import Pdq
from proxy.screening.hashlists import HashList
from proxy.screening.policy import Policy
from proxy.screening.upload import LANDING_ACTIONS

log = logging.getLogger("bucketguard.federation")
#: Attestations whose signature was checked at use, kept to skip the check next time (cleared when full).
MAX_VERIFIED = 100_000


class PdqIndex:
    """Block attestations' PDQ hashes, matched as the local block lists are (every frame, every orientation)."""

    def __init__(self) -> None:
        self.ids: list[tuple[str, str]] = []
        self.hashes = HashList("federation")

    def load(self, rows: list[tuple[str, str, str]]) -> None:
        ids, hashes = [], HashList("federation")
        for peer, att_id, pdq in rows:
            if len(pdq) != 64 or not all(c in "0123456789abcdefABCDEF" for c in pdq):
                continue
            hashes.add("pdq", pdq, "")
            ids.append((peer, att_id))
        self.ids, self.hashes = ids, hashes

    def near(self, candidates: Sequence[Pdq], max_distance: int) -> list[tuple[str, str]]:
        return [self.ids[i] for i in self.hashes.pdq_within(candidates, max_distance)]


class PeerAttestations:
    """Decides on trusted peers' attestations (see proxy.federation.trust for the rules)."""

    name = "federation"

    def __init__(self, store: FederationStore, policy: Policy, rules: Rules, *, pdq_max_distance: int) -> None:
        self.store = store
        self.policy = policy
        self.rules = rules
        self.pdq_max_distance = pdq_max_distance
        self.index = PdqIndex()
        self._verified: set[tuple[str, str, str]] = set()
        self._keys: dict[str, PublicKey] = {}

    def verified(self, row: dict[str, Any]) -> bool:
        """The row's own signed statement verifies and says what the row says (once per attestation)."""
        ident = (row["peer"], row["att_id"], row["token"])
        if ident in self._verified:
            return True
        try:
            kid = token_kid(row["token"])
            lines = {self._key(row["peer_key"]).kid: row["peer_key"]}
            lines.update({k: v["key"] for k, v in json.loads(row["peer_retired"] or "{}").items()})
            payload = verify(row["token"], self._key(lines[kid]))
        except (BadSignature, KeyError, KeyFileError, ValueError) as exc:
            log.warning("federation: stored attestation %s of %s does not verify: %s", row["att_id"], row["peer"], exc)
            return False
        if (payload.get("id"), payload.get("sha256"), payload.get("verdict")) != (
                row["att_id"], row["sha256"], row["verdict"]):
            log.warning("federation: stored attestation %s of %s differs from its signed statement",
                        row["att_id"], row["peer"])
            return False
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified.add(ident)
        return True

    def _key(self, line: str) -> PublicKey:
        key = self._keys.get(line)
        if key is None:
            key = self._keys[line] = PublicKey.parse(line)
        return key

    async def refresh(self) -> None:
        self.index.load(await self.store.block_pdqs())

    async def exact(self, sha256: str) -> list[dict[str, Any]]:
        """The usable attestations of exactly these bytes whose signatures verify."""
        return [row for row in await self.store.usable(sha256) if self.verified(row)]

    async def early(self, facts: Facts) -> list[dict[str, Any]] | None:
        """Started when the decision begins: the attestations of exactly these bytes, signatures checked, while
        the perceptual step's decoding runs in another process; unless the bytes are allowed or in the verdict
        cache (then this step is rarely reached and asks for itself). The lookup it waits for is the allow-list
        step's (the verdict cache answers lookups of the same bytes waiting together with one query), and waiting
        for it keeps the signature checks out of the way of the work that starts the decoding."""
        allowed, cached = await facts.lookup()
        if allowed or cached is not None:
            return None
        return await self.exact(facts.hashes.sha256)

    async def decide(self, facts: Facts) -> Decision | None:
        started = facts.early.get(self.name)
        exact = await started if started is not None else None
        rows = exact if exact is not None else await self.exact(facts.hashes.sha256)
        if self.index.ids:  # block attestations matched by PDQ (every frame, every orientation)
            near = self.index.near(await facts.pdq_candidates(), self.pdq_max_distance)
            if near:
                have = {(row["peer"], row["att_id"]) for row in rows}
                rows = rows + [row for row in await self.store.usable(None, near)
                               if (row["peer"], row["att_id"]) not in have and self.verified(row)]
        if not rows:
            return None
        judgement = judge(rows, self.policy, self.rules, sha256=facts.hashes.sha256)
        if judgement is None:
            return None
        if judgement.action in LANDING_ACTIONS and not (await facts.frames()).decodable:
            return None  # bytes this instance could not decode (over budget, stopped) go to on_undecodable
        base: dict[str, Any] = await facts.base()
        return Decision(judgement.action, judgement.rule, judgement.category, self.name, judgement.reason,
                        judgement.signals, match={"federation": judgement.sources}, packs=judgement.packs,
                        decided_by="federation", **base)
