"""The CLIP concept decision: underage AND lewd concept hits, with control words that lower the underage scores.

A faithful re-statement (as data plus this evaluator) of horde-safety's CSAM check for images without a prompt:
control-word adjustments apply in order, each skipped for a word whose plural/singular partner already clears
that word's threshold; a word counts once per threshold it clears (context) and twice more when it clears the
critical one; a CSAM verdict needs at least `min_underage_hits` underage hits and one lewd hit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ConceptRules:
    underage_context: dict[str, float]
    underage_critical: dict[str, float]
    lewd_context: dict[str, float]
    control_adjustments: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...]
    pairs: dict[str, str]
    min_underage_hits: int = 3

    @property
    def words(self) -> list[str]:
        """Every phrase the image is compared with, in a fixed order (the rows of the concept table)."""
        seen: dict[str, None] = {}
        for word in [*self.underage_context, *self.underage_critical, *self.lewd_context,
                     *(control for control, _, _ in self.control_adjustments)]:
            seen.setdefault(word, None)
        return list(seen)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConceptRules:
        return cls(
            underage_context={k: float(v) for k, v in data["underage_context"].items()},
            underage_critical={k: float(v) for k, v in data["underage_critical"].items()},
            lewd_context={k: float(v) for k, v in data["lewd_context"].items()},
            control_adjustments=tuple(
                (str(c["control"]), float(c["threshold"]), tuple((str(w), float(d)) for w, d in c["adjustments"]))
                for c in data["control_adjustments"]),
            pairs={str(k): str(v) for k, v in data["pairs"].items()},
            min_underage_hits=int(data.get("min_underage_hits", 3)),
        )

    @classmethod
    def load(cls, path: Path | None = None) -> ConceptRules:
        if path is None:
            text = resources.files("inference.data").joinpath("csam_concepts.json").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ConceptDecision:
    csam: bool
    underage_hits: list[str]
    lewd_hits: list[str]
    adjusted: dict[str, float]
    underage_margin: float
    lewd_margin: float


def evaluate(rules: ConceptRules, similarity: dict[str, float]) -> ConceptDecision:
    sim = dict(similarity)
    for control, threshold, adjustments in rules.control_adjustments:
        if sim[control] > threshold:
            for word, delta in adjustments:
                partner = rules.pairs.get(word)
                if partner is not None and sim[partner] > rules.underage_context[word]:
                    continue
                sim[word] += delta
    underage = [w for w, t in rules.underage_context.items() if sim[w] > t]
    for word, threshold in rules.underage_critical.items():
        if sim[word] > threshold:
            underage.extend([word, word])
    lewd = [w for w, t in rules.lewd_context.items() if sim[w] > t]
    return ConceptDecision(
        csam=len(underage) >= rules.min_underage_hits and bool(lewd),
        underage_hits=underage,
        lewd_hits=lewd,
        adjusted=sim,
        underage_margin=max(sim[w] - t for w, t in rules.underage_context.items()),
        lewd_margin=max(sim[w] - t for w, t in rules.lewd_context.items()),
    )


#: The signals of a CLIP concept pack, as listed in its manifest.
SIGNALS = ("clip_csam", "clip_underage", "clip_lewd", "clip_underage_hits", "clip_lewd_hits",
           "clip_underage_margin", "clip_lewd_margin")


def signals(decision: ConceptDecision) -> dict[str, float]:
    """The decision as named numbers.

    clip_csam: 1.0 when the reference check says underage AND lewd. clip_underage / clip_lewd: the highest
    margin (similarity minus threshold, after control adjustments) over the group's context thresholds, so
    > 0 means at least one concept of the group fired. clip_underage_hits / clip_lewd_hits: the reference's
    hit counts (critical underage hits count three times). clip_*_margin: older names of clip_underage and
    clip_lewd, kept while policies and tests still use them.
    """
    underage, lewd = round(decision.underage_margin, 6), round(decision.lewd_margin, 6)
    return {
        "clip_csam": 1.0 if decision.csam else 0.0,
        "clip_underage": underage,
        "clip_lewd": lewd,
        "clip_underage_hits": float(len(decision.underage_hits)),
        "clip_lewd_hits": float(len(decision.lewd_hits)),
        "clip_underage_margin": underage,
        "clip_lewd_margin": lewd,
    }
