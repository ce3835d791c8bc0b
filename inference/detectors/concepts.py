"""The CLIP concept decision: underage AND lewd concept hits, with control words that lower the underage scores.

A faithful re-statement (as data plus this evaluator) of horde-safety's deprecated `check_for_csam` for images
without a prompt, called as fedi-safety calls it (`model_info={"nsfw": True}`): the NSFW-model adjustments raise
four lewd similarities (nudity and naked +0.02, porn +0.015, orgy +0.01) when `model_nsfw` is set; then the
control-word adjustments apply in order, each skipped for a word whose plural/singular partner already clears
that word's threshold; a word counts once per threshold it clears (context) and twice more when it clears the
critical one; a CSAM verdict needs at least `min_underage_hits` underage hits and one lewd hit.

`load_evaluator` picks this evaluator or the newer one (`inference.detectors.nsfw_checker`) by the rules file's
`algorithm` field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

ALGORITHM = "check_for_csam"
#: Rules files shipped in inference/data, by algorithm.
RULES_FILES = {"check_for_csam": "csam_concepts.json", "nsfw_checker": "nsfw_checker.json"}


@dataclass(frozen=True)
class ConceptRules:
    underage_context: dict[str, float]
    underage_critical: dict[str, float]
    lewd_context: dict[str, float]
    control_adjustments: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...]
    pairs: dict[str, str]
    min_underage_hits: int = 3
    #: The reference's NSFW_MODEL_ADJUSTMENTS, applied when `model_nsfw` (fedi-safety passes {"nsfw": True}).
    nsfw_model_adjustments: tuple[tuple[str, float], ...] = ()
    model_nsfw: bool = False

    algorithm = ALGORITHM

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
            nsfw_model_adjustments=tuple((str(w), float(d)) for w, d in data.get("nsfw_model_adjustments", ())),
            model_nsfw=bool(data.get("model_nsfw", False)),
        )

    @classmethod
    def load(cls, path: Path | None = None) -> ConceptRules:
        if path is None:
            text = resources.files("inference.data").joinpath("csam_concepts.json").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def signals(self, similarity: dict[str, float]) -> dict[str, float]:
        return signals(evaluate(self, similarity))


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
    if rules.model_nsfw:
        for word, delta in rules.nsfw_model_adjustments:
            sim[word] += delta
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


class ConceptEvaluator(Protocol):
    """What the CLIP detector needs from a concept algorithm."""

    algorithm: str

    @property
    def words(self) -> list[str]: ...

    def signals(self, similarity: dict[str, float]) -> dict[str, float]: ...


def rules_text(algorithm: str) -> str:
    """The shipped rules file of an algorithm (`check_for_csam` or `nsfw_checker`)."""
    try:
        name = RULES_FILES[algorithm]
    except KeyError as exc:
        raise ValueError(f"unknown concept algorithm {algorithm!r} (known: {', '.join(RULES_FILES)})") from exc
    return resources.files("inference.data").joinpath(name).read_text(encoding="utf-8")


def evaluator_from_dict(data: dict[str, Any]) -> ConceptEvaluator:
    """The evaluator a rules file names in `algorithm` (files without one are `check_for_csam`)."""
    algorithm = str(data.get("algorithm", ALGORITHM))
    if algorithm == ALGORITHM:
        return ConceptRules.from_dict(data)
    if algorithm == "nsfw_checker":
        from inference.detectors.nsfw_checker import NsfwCheckerRules

        return NsfwCheckerRules(data)
    raise ValueError(f"unknown concept algorithm {algorithm!r} (known: {', '.join(RULES_FILES)})")


def load_evaluator(path: Path | None = None, algorithm: str = ALGORITHM) -> ConceptEvaluator:
    """A pack's rules file, or the shipped rules of `algorithm` when no path is given."""
    text = path.read_text(encoding="utf-8") if path is not None else rules_text(algorithm)
    return evaluator_from_dict(json.loads(text))
