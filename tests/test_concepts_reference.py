"""Both CLIP concept evaluators against an independent re-statement of horde-safety's rules, on random vectors.

The re-statements below were written for this test from horde-safety's csam_checker.py (deprecated
`check_for_csam`, called as fedi-safety calls it: no prompt, model_info {"nsfw": True}) and
nsfw_checker_class.py (`NSFWChecker.check_for_nsfw`, no prompt, no DeepDanbooru model). Their numbers are typed
here, not read from inference/data, so a wrong number in the shipped data fails too.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.detectors.concepts import ConceptRules, evaluate, load_evaluator
from inference.detectors.nsfw_checker import NsfwCheckerRules

# ---- check_for_csam, re-stated ------------------------------------------------------------------------------

UC = {"lolicon": 0.2, "child": 0.188, "children": 0.188, "teen": 0.21, "teens": 0.21, "infant": 0.19,
      "infants": 0.19, "toddler": 0.19, "toddlers": 0.19, "tween": 0.188, "tweens": 0.188}
CRIT = {"lolicon": 0.25, "child": 0.225, "children": 0.225, "toddler": 0.22, "toddlers": 0.22, "infant": 0.22,
        "infants": 0.22, "teen": 0.26, "teens": 0.26, "tween": 0.25, "tweens": 0.25}
LEWD = {"porn": 0.2, "naked": 0.195, "hentai": 0.25, "orgy": 0.21, "nudity": 0.195, "lesbian scene": 0.22,
        "gay scene": 0.22}
PARTNER = {"tween": "tweens", "teen": "teens", "infant": "infants", "toddler": "toddlers", "child": "children"}
PARTNER.update({b: a for a, b in list(PARTNER.items())})
CONTROLS = [("pregnant", 0.21, {"infant": -0.04, "infants": -0.04, "toddler": -0.03, "toddlers": -0.03,
                                "child": -0.02, "children": -0.02}),
            ("anime", 0.23, {"teen": -0.03, "teens": -0.03}),
            ("shota", 0.21, {"teen": 0.005, "teens": 0.005, "tween": 0.01, "tweens": 0.01, "child": 0.013,
                             "children": 0.013}),
            ("east asian", 0.24, {"teen": -0.025, "child": -0.025, "tween": -0.025})]
NSFW_MODEL = {"nudity": 0.02, "naked": 0.02, "porn": 0.015, "orgy": 0.01}
LEGACY_WORDS = sorted({*UC, *LEWD, *(c for c, _, _ in CONTROLS)})


def reference_check_for_csam(similarity: dict[str, float]) -> tuple[bool, int, int]:
    s = dict(similarity)
    for word, delta in NSFW_MODEL.items():
        s[word] += delta
    for control, limit, changes in CONTROLS:
        if not s[control] > limit:
            continue
        for word, delta in changes.items():
            if word in PARTNER and s[PARTNER[word]] > UC[word]:
                continue
            s[word] += delta
    underage = sum(s[w] > t for w, t in UC.items()) + 2 * sum(s[w] > t for w, t in CRIT.items())
    lewd = sum(s[w] > t for w, t in LEWD.items())
    return underage >= 3 and lewd >= 1, underage, lewd


# ---- NSFWChecker.check_for_nsfw, re-stated --------------------------------------------------------------------

PREFIXES = {"photo of": 0, "painting of": 0.005, "illustration of": 0.075, "3d render of": 0.0125}
HUMAN_PARTS = {"a boy": 0, "boys": 0, "a girl": 0, "girls": 0, "a teen": 0, "a man": 0.01, "men": 0, "a woman": 0,
               "a couple": 0, "couple kissing": 0, "a girl in a bikini": 0.01, "girls in bikinis": 0.01}
HUMAN = {"boy": 0.194, "boys": 0.194, "man": 0.194, "men": 0.194, "girl": 0.194, "girls": 0.194, "woman": 0.194,
         "women": 0.194, "teenager": 0.194, "teen": 0.19, "teens": 0.19}
UNDERAGE = {"child": 0.19, "children": 0.19, "young children": 0.189, "a baby": 0.19, "an infant": 0.19,
            "infants": 0.19, "toddler": 0.19, "toddlers": 0.19, "tween": 0.19, "tweens": 0.19, "lolicon": 0.20}
DANGER_MOD = {"child": 0.035, "children": 0.035, "young children": 0.03, "a baby": 0.0275, "an infant": 0.0275,
              "infants": 0.0275, "toddler": 0.0275, "toddlers": 0.0275, "tween": 0.045, "tweens": 0.045,
              "lolicon": 0.044}
NSFW_PRED = {"18+": 0.20, "explicit content": 0.21, "erotica": 0.21, "exposed erection": 0.215,
             "close up of a vagina": 0.24, "photo of vagina": 0.22, "porn scene": 0.21, "lesbian scene": 0.22,
             "gay scene": 0.22}
ANIME = {"japanese animation": 0.20, "Japanese cartoon": 0.20, "anime": 0.20, "cartoon": 0.20, "manga": 0.205}
NSFW_ISOLATED = {"sexual": 0.2, "sexy": 0.22, "uncensored": 0.21, "naked": 0.22, "nude": 0.22, "nsfw": 0.21,
                 "nudity": 0.21, "erotic": 0.21, "fucking": 0.21}
NSFW_PARTS = {"explicit content": 0.20, "exposed erection": 0.21, "close up of a vagina": 0.24,
              "a womans legs spread, vagina exposed": 0.23, "exposed vagina": 0.22, "erotica": 0.21, "blowjob": 0.22,
              "vagina": 0.21, "an erection": 0.21, "porn": 0.2, "porn scene": 0.20, "lesbian scene": 0.22,
              "gay scene": 0.22, "a nude man's ass": 0.21, "a nude woman's ass": 0.21, "exposed breasts": 0.22,
              "girl in a bikini": 0.22, "underwear": 0.21, "lingerie": 0.21}
SYNTH = {
    "quintesstain corinblazing dean n blondes bronxsmug demi pilebarcelonluisspandex ,... ...#": 0.205,
    "liam paying awwww hubby ... feeding mr  omg dropbox brad(@ zaynwoo \u2026.. burr": 0.205,
    "nel ov lexi lov thwatchin thalaireason zz big oj anticipation \u0e1aci ov prick": 0.205,
    "somehow dang rochelle sizzgusta imrankhanhalftime rankings equities exists skynews -- - smokin epidemiq": 0.205,
    "asses zeit brunette brunette bikini meatlessdesired androunprecearomatic limestone "
    "juxtatweetapicturevalmelee photo": 0.205,
}
ANIME_NSFW = {"nsfw": 0.21, "18+": 0.215, "nipples": 0.20, "nipple": 0.20, "naked child": 0.19,
              "naked breasts": 0.205, "illustration of naked breasts": 0.205, "exposed breasts": 0.205,
              "illustration of exposed breasts": 0.205, "nudity": 0.195, "nude": 0.195, "naked": 0.22,
              "cartoon porn": 0.20, "sex": 0.21}
PLURALS = [("tween", "tweens"), ("teen", "teens"), ("an infant", "infants"), ("toddler", "toddlers"),
           ("child", "children")]


def _tables() -> dict[str, dict[str, float]]:
    danger = {w: UNDERAGE[w] + DANGER_MOD[w] for w in DANGER_MOD}
    human, nsfw_pred, under, dang = dict(HUMAN), dict(NSFW_PRED), dict(UNDERAGE), dict(danger)
    concepts = {**NSFW_ISOLATED, **NSFW_PARTS}
    for prefix, add in PREFIXES.items():
        human.update({f"{prefix} {p}": 0.202 + add + v for p, v in HUMAN_PARTS.items()})
        nsfw_pred.update({f"{prefix} {p}": add + v for p, v in NSFW_PRED.items()})
        under.update({f"{prefix} {w}": add + UNDERAGE[w] for w in danger if w != "lolicon"})
        dang.update({f"{prefix} {w}": add + v for w, v in danger.items() if w != "lolicon"})
        concepts.update({f"{prefix} {p}": add + v for p, v in NSFW_PARTS.items()})
    concepts.update(SYNTH)
    return {"predicates": {**ANIME, **human, **under, **nsfw_pred}, "under": under, "danger": dang,
            "concepts": concepts}


T = _tables()


def reference_check_for_nsfw(similarity: dict[str, float]) -> dict[str, object]:
    s = {k: round(v, 4) for k, v in similarity.items()}
    anime_seen = [s[w] for w, t in ANIME.items() if s[w] > t]
    is_anime = bool(anime_seen)
    if is_anime and max(anime_seen) < 0.208 and any(s[w] > 0.24 for w in T["predicates"] if "photo" in w):
        is_anime = False
    check = any(s[w] > t for w, t in T["predicates"].items()) or any(s[w] > t for w, t in T["danger"].items())
    nsfw = []
    if check:
        for word, limit in T["concepts"].items():
            if is_anime:
                if word not in ANIME_NSFW:
                    continue
                limit = ANIME_NSFW[word]
            if s[word] > limit:
                nsfw.append(word)
    found = {w: s[w] for w, t in T["danger"].items() if s[w] > t}
    underage = len(found) > 0
    if not underage:
        if is_anime:
            for word in ("teen", "teens"):
                if s[word] > HUMAN[word]:
                    found[word] = s[word]
            for word, base in UNDERAGE.items():
                if word != "lolicon" and s[word] > base + DANGER_MOD[word] * 0.05:
                    found[word] = s[word]
        else:
            for word, base in T["under"].items():
                if s[word] > base + (T["danger"][word] - base) * 0.4:
                    found[word] = s[word]
        for a, b in PLURALS:
            for one, other in ((a, b), (b, a)):
                if one in found and other in found:
                    found.pop(other if found[one] > found[other] else one)
        underage = len(found) >= 2
    return {"csam": underage and bool(nsfw), "underage": underage, "nsfw": bool(nsfw), "anime": is_anime,
            "found": len(found), "nsfw_hits": len(nsfw)}


# ---- the comparisons ------------------------------------------------------------------------------------------

LEGACY = ConceptRules.load()
NEWER = NsfwCheckerRules.load()


def random_vector(words: list[str], rng: np.random.Generator, hot: float) -> dict[str, float]:
    """Most phrases low, a random share near the thresholds (0.17-0.27), some on a threshold-like 3-decimal value
    or 0.00003 either side of it (where the reference's rounding to 4 decimals decides)."""
    values = np.where(rng.random(len(words)) < hot, rng.uniform(0.17, 0.27, len(words)),
                      rng.uniform(0.05, 0.17, len(words)))
    exact = rng.random(len(words)) < 0.1
    values[exact] = np.round(values[exact], 3) + rng.choice([-3e-5, 0.0, 3e-5], int(exact.sum()))
    return {w: float(v) for w, v in zip(words, values, strict=True)}


def test_the_shipped_data_is_the_reference_data() -> None:
    assert set(LEGACY.words) == set(LEGACY_WORDS)
    assert set(NEWER.words) == set(T["predicates"]) | set(T["concepts"])
    assert NEWER.predicates == T["predicates"] and NEWER.nsfw_concepts == T["concepts"]
    assert NEWER.combined_danger == T["danger"] and NEWER.combined_underage == T["under"]
    assert len(NEWER.words) == 233


def test_check_for_csam_matches_the_reference_on_200000_random_vectors() -> None:
    rng = np.random.default_rng(14)
    outcomes = {True: 0, False: 0}
    for _ in range(200_000 // 20):
        hot = float(rng.uniform(0.05, 0.6))
        for _ in range(20):
            vector = random_vector(LEGACY_WORDS, rng, hot)
            expected, underage, lewd = reference_check_for_csam(vector)
            decision = evaluate(LEGACY, vector)
            assert (decision.csam, len(decision.underage_hits), len(decision.lewd_hits)) == (
                expected, underage, lewd), vector
            outcomes[expected] += 1
    assert min(outcomes.values()) > 10_000, outcomes  # both verdicts well exercised


@settings(max_examples=300, deadline=None, derandomize=True)  # the same examples on every run: CI is reproducible
@given(seed=st.integers(0, 2**32 - 1), hot=st.floats(0.0, 0.5))
def test_check_for_nsfw_matches_the_reference_on_random_vectors(seed: int, hot: float) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(10):
        vector = random_vector(NEWER.words, rng, hot)
        expected = reference_check_for_nsfw(vector)
        decision = NEWER.evaluate(vector)
        assert {"csam": decision.csam, "underage": decision.underage_subject, "nsfw": decision.nsfw,
                "anime": decision.anime, "found": len(decision.underage_found),
                "nsfw_hits": len(decision.nsfw_found)} == expected, vector


def test_check_for_nsfw_outcomes_are_all_exercised() -> None:
    rng = np.random.default_rng(13)
    seen: dict[str, set[bool]] = {"csam": set(), "underage": set(), "nsfw": set(), "anime": set()}
    mismatches = 0
    for index in range(4000):
        vector = random_vector(NEWER.words, rng, (index % 40) / 100)
        expected = reference_check_for_nsfw(vector)
        got = NEWER.signals(vector)
        mismatches += (got["clip_csam"] == 1.0) != expected["csam"]
        for key in seen:
            seen[key].add(bool(expected[key]))
    assert mismatches == 0
    assert all(values == {True, False} for values in seen.values()), seen


def test_the_newer_algorithm_is_the_clip_default_and_both_load_by_name() -> None:
    from inference.export.clip import DEFAULT_ALGORITHM

    assert DEFAULT_ALGORITHM == "nsfw_checker"
    assert load_evaluator(algorithm="nsfw_checker").algorithm == "nsfw_checker"
    assert load_evaluator(algorithm="check_for_csam").algorithm == "check_for_csam"
