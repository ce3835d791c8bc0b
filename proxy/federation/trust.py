"""The quorum rules: what the attestations that may count now mean under this instance's own policy.

In order:
  1. block: peers trusted for `block` whose attestation says block (by exact SHA-256, or PDQ within the
     local distance), weights summed per peer, reaching `block_quorum` -> the local `on_peer_block` action
     (quarantine for review by default; never a silent delete);
  2. signals: the local policy applied to each trusted peer's signals (packs accepted): any rule that does not
     allow decides, so a strict instance reaches its own verdict from a lenient peer's numbers;
  3. safe: peers trusted for `safe` attesting clean for the exact SHA-256 with accepted packs and signals the
     local policy allows, weights summed per peer, reaching `safe_quorum` -> allow.
Anything else: no decision, the detectors run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.screening.policy import Policy

_SEVERITY = {"reject": 3, "quarantine": 2, "flag": 1}


@dataclass(frozen=True)
class Rules:
    safe_quorum: float = 2.0
    block_quorum: float = 1.0
    accept_packs: tuple[str, ...] = ()
    on_peer_block: str = "quarantine"

    def accepts(self, packs: Mapping[str, str]) -> bool:
        if not packs:
            return False
        if not self.accept_packs:
            return True
        return all(name in self.accept_packs or f"{name}@{version}" in self.accept_packs
                   for name, version in packs.items())


@dataclass(frozen=True)
class Judgement:
    action: str
    rule: str
    category: str
    reason: str
    signals: dict[str, float] = field(default_factory=dict)
    packs: dict[str, str] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)


def _source(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"peer": row["peer"], "id": row["att_id"], "verdict": row["verdict"], "basis": row["basis"],
            "token": row["token"]}


def _weights(rows: Sequence[Mapping[str, Any]]) -> float:
    return sum({row["peer"]: float(row["weight"]) for row in rows}.values())


def judge(rows: Sequence[Mapping[str, Any]], policy: Policy, rules: Rules, *, sha256: str) -> Judgement | None:
    """The decision the usable attestations `rows` support for bytes `sha256`, or None."""
    blocks = [r for r in rows if r["verdict"] == "block" and "block" in r["trust"]]
    if blocks and _weights(blocks) >= rules.block_quorum:
        names = ", ".join(sorted({r["peer"] for r in blocks}))
        how = "exact" if any(r["sha256"] == sha256 for r in blocks) else "PDQ"
        category = next((r["category"] for r in blocks if r["category"]), "federation")
        return Judgement(rules.on_peer_block, "federation:block", category,
                         f"block attested by {names} ({how} match); for review", sources=[_source(r) for r in blocks])
    exact = [r for r in rows if r["sha256"] == sha256 and r["trust"] and r["signals"] and rules.accepts(r["packs"])]
    worst: tuple[int, Any, Mapping[str, Any]] | None = None
    for row in exact:
        decided = policy.decide(row["signals"], undecodable=row["signals"].get("undecodable", 0.0) > 0)
        severity = _SEVERITY.get(decided.action, 0)
        if severity and (worst is None or severity > worst[0]):
            worst = (severity, decided, row)
    if worst is not None:
        _, decided, row = worst
        return Judgement(decided.action, decided.rule, decided.category,
                         f"{decided.reason} (the local policy on signals attested by {row['peer']})",
                         dict(row["signals"]), dict(row["packs"]), [_source(row)])
    clean = [r for r in exact if r["verdict"] == "clean" and "safe" in r["trust"]]
    if clean and _weights(clean) >= rules.safe_quorum:
        merged: dict[str, float] = {}
        packs: dict[str, str] = {}
        for row in clean:
            packs.update(row["packs"])
            for name, value in row["signals"].items():
                merged[name] = max(value, merged.get(name, value))
        if _SEVERITY.get(policy.decide(merged, undecodable=merged.get("undecodable", 0.0) > 0).action, 0):
            return None  # each peer's numbers pass, their worst together do not: let the detectors look
        names = ", ".join(sorted({r["peer"] for r in clean}))
        return Judgement("allow", "federation:safe", "", f"known safe: clean attested by {names}", merged, packs,
                         [_source(r) for r in clean])
    return None
