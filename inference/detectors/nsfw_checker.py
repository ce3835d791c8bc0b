"""The newer CLIP concept decision: horde-safety's `NSFWChecker.check_for_nsfw`, the one fedi-safety runs by default.

A re-statement (data in `inference/data/nsfw_checker.json`, this evaluator) of the reference for images without a
prompt and without its optional DeepDanbooru model:

1. Similarities are rounded to 4 decimals. Predicates are the anime/cartoon phrases, the human phrases (isolated,
   and "prefix part" phrases at the default threshold plus the prefix's and the part's offsets), the underage
   phrases (plain, and prefixed except lolicon) and the NSFW predicate phrases (plain and prefixed).
2. Anime: an anime/cartoon predicate above its threshold; undone when every anime hit is below 0.208 and a
   predicate naming "photo" is above 0.24.
3. A subject needs checking when any predicate clears its threshold, or any underage danger concept (underage
   threshold + danger modifier, plus the prefix's offset) clears its own.
4. NSFW: only when a subject needs checking; any NSFW concept (isolated, parts, prefixed parts, synthetic) above
   its threshold; for anime, only the concepts of the anime list, at the anime thresholds.
5. Underage subject: one danger concept; otherwise a second pass with lower thresholds (for anime: teen/teens at
   their human thresholds and the plain underage predicates at threshold + 0.05 x modifier; otherwise every
   underage predicate at threshold + 0.4 x (danger - threshold)), plural/singular pairs de-duplicated keeping
   the higher one, and at least two left.
6. CSAM: an underage subject AND NSFW.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

ALGORITHM = "nsfw_checker"

#: The signals of a CLIP concept pack using this evaluator.
SIGNALS = ("clip_csam", "clip_underage", "clip_lewd", "clip_underage_hits", "clip_lewd_hits",
           "clip_underage_margin", "clip_lewd_margin", "clip_underage_subject", "clip_nsfw", "clip_anime")


def _floats(raw: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in raw.items()}


@dataclass(frozen=True)
class NsfwCheckerDecision:
    csam: bool
    nsfw: bool
    underage_subject: bool
    anime: bool
    underage_found: dict[str, float]
    nsfw_found: dict[str, float]
    underage_margin: float
    lewd_margin: float


class NsfwCheckerRules:
    """The reference's tables, derived once from the data file; `evaluate` is the check itself."""

    algorithm = ALGORITHM

    def __init__(self, data: dict[str, Any]) -> None:
        self.about = str(data.get("about", ""))
        prefixes = _floats(data["image_description_prefixes"])
        default = float(data["predicate_default_threshold"])
        underage = _floats(data["underage_predicates"])
        modifiers = _floats(data["underage_danger_modifiers"])
        unprefixed = set(data.get("unprefixed_underage", []))
        nsfw_predicates = _floats(data["nsfw_predicates"])
        self.anime_predicates = _floats(data["anime_cartoon_predicates"])
        self.underage_predicates = underage
        self.danger_modifiers = modifiers
        danger = {word: modifiers[word] + underage[word] for word in modifiers}
        human = _floats(data["human_predicates_isolated"])
        combined_underage = dict(underage)
        combined_danger = dict(danger)
        combined_nsfw = dict(nsfw_predicates)
        for prefix, offset in prefixes.items():
            for part, part_offset in _floats(data["human_predicate_parts"]).items():
                human[f"{prefix} {part}"] = default + offset + part_offset
            for word, threshold in nsfw_predicates.items():
                combined_nsfw[f"{prefix} {word}"] = offset + threshold
            for word, threshold in danger.items():
                if word in unprefixed:
                    continue
                combined_danger[f"{prefix} {word}"] = offset + threshold
                combined_underage[f"{prefix} {word}"] = offset + underage[word]
        self.human_predicates = human
        self.combined_underage = combined_underage
        self.combined_danger = combined_danger
        # Later groups win on a repeated phrase, as in a dict merge.
        self.predicates = {**self.anime_predicates, **human, **combined_underage, **combined_nsfw}
        parts = _floats(data["nsfw_concept_parts"])
        prefixed_parts = {f"{prefix} {part}": offset + threshold
                          for prefix, offset in prefixes.items() for part, threshold in parts.items()}
        self.nsfw_concepts = {**_floats(data["nsfw_isolated_concepts"]), **parts, **prefixed_parts,
                              **_floats(data["nsfw_synth_concepts"])}
        self.anime_nsfw_concepts = _floats(data["nsfw_post_anime_concepts"])
        override = data["anime_photo_override"]
        self.anime_below, self.photo_above = float(override["anime_below"]), float(override["photo_above"])
        second = data["second_pass"]
        self.anime_multiplier, self.photo_multiplier = float(second["anime_multiplier"]), float(
            second["photo_multiplier"])
        self.anime_teen_words = tuple(str(w) for w in second["anime_teen_words"])
        self.anime_skip = frozenset(str(w) for w in second["anime_skip"])
        self.pairs = tuple((str(a), str(b)) for a, b in data["pairs"])
        self.min_second_pass = int(data["min_second_pass_predicates"])
        self.decimals = int(data.get("decimals", 4))

    @property
    def words(self) -> list[str]:
        """Every phrase the image is compared with, once each, in a fixed order (the rows of the concept table)."""
        return list(dict.fromkeys([*self.predicates, *self.nsfw_concepts]))

    @classmethod
    def load(cls, path: Path | None = None) -> NsfwCheckerRules:
        if path is None:
            text = resources.files("inference.data").joinpath("nsfw_checker.json").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        return cls(json.loads(text))

    def evaluate(self, similarity: dict[str, float]) -> NsfwCheckerDecision:
        sim = {word: round(float(similarity[word]), self.decimals) for word in self.words}
        anime_hits = {w: sim[w] for w, t in self.anime_predicates.items() if sim[w] > t}
        anime = bool(anime_hits)
        if anime and all(v < self.anime_below for v in anime_hits.values()) and any(
                "photo" in w and sim[w] > self.photo_above for w in self.predicates):
            anime = False
        needs_check = any(sim[w] > t for w, t in self.predicates.items()) or any(
            sim[w] > t for w, t in self.combined_danger.items())
        nsfw_found: dict[str, float] = {}
        if needs_check:
            for word, threshold in self.nsfw_concepts.items():
                if anime:
                    if word not in self.anime_nsfw_concepts:
                        continue
                    threshold = self.anime_nsfw_concepts[word]
                if sim[word] > threshold:
                    nsfw_found[word] = sim[word]
        found = {w: sim[w] for w, t in self.combined_danger.items() if sim[w] > t}
        underage_subject = bool(found)
        if not underage_subject:
            if anime:
                for word in self.anime_teen_words:
                    if sim[word] > self.predicates[word]:
                        found[word] = sim[word]
                for word, threshold in self.underage_predicates.items():
                    if word in self.anime_skip or "photo" in word:
                        continue
                    if sim[word] > threshold + self.danger_modifiers[word] * self.anime_multiplier:
                        found[word] = sim[word]
            else:
                for word, threshold in self.combined_underage.items():
                    raised = threshold + (self.combined_danger[word] - threshold) * self.photo_multiplier
                    if sim[word] > raised:
                        found[word] = sim[word]
            for first, second in self.pairs:
                if first in found and second in found:
                    del found[second if found[first] > found[second] else first]
            underage_subject = len(found) >= self.min_second_pass
        return NsfwCheckerDecision(
            csam=underage_subject and bool(nsfw_found), nsfw=bool(nsfw_found), underage_subject=underage_subject,
            anime=anime, underage_found=found, nsfw_found=nsfw_found,
            underage_margin=max(sim[w] - t for w, t in self.combined_danger.items()),
            lewd_margin=max(sim[w] - t for w, t in self.nsfw_concepts.items()),
        )

    def signals(self, similarity: dict[str, float]) -> dict[str, float]:
        """The decision as named numbers.

        clip_csam: 1 when the reference says CSAM (underage subject AND NSFW); clip_underage_subject, clip_nsfw,
        clip_anime: its three intermediate verdicts. clip_underage: the highest margin over the underage danger
        concepts (> 0: one fired, which alone makes an underage subject); clip_lewd: the highest margin over the
        NSFW concepts at their general thresholds. clip_underage_hits / clip_lewd_hits: the predicates and
        concepts the reference counted. clip_*_margin: older names of clip_underage and clip_lewd.
        """
        decision = self.evaluate(similarity)
        underage, lewd = round(decision.underage_margin, 6), round(decision.lewd_margin, 6)
        return {
            "clip_csam": float(decision.csam),
            "clip_underage": underage,
            "clip_lewd": lewd,
            "clip_underage_hits": float(len(decision.underage_found)),
            "clip_lewd_hits": float(len(decision.nsfw_found)),
            "clip_underage_margin": underage,
            "clip_lewd_margin": lewd,
            "clip_underage_subject": float(decision.underage_subject),
            "clip_nsfw": float(decision.nsfw),
            "clip_anime": float(decision.anime),
        }
