"""Severity presets (one line of the policy file) and the refusal of CLIP rules on uncalibrated packs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.packs import load_pack, read_manifest, write_manifest
from proxy.screening.policy import PRESETS, PolicyError, calibration_problems, load_policy, load_preset

SEVERITY = {"allow": 0, "flag": 1, "quarantine": 2, "reject": 2}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=60)


def random_signals(rng: np.random.Generator) -> dict[str, float]:
    signals = {"nsfw": rng.random(), "explicit": rng.random(), "p_minor": rng.random(), "faces": 1.0,
               "clip_csam": float(rng.random() < 0.1), "clip_underage": rng.uniform(-0.05, 0.02),
               "clip_lewd": rng.uniform(-0.05, 0.02)}
    if rng.random() < 0.7:
        signals["min_face_age"] = rng.uniform(5, 40)
    return signals


def test_one_line_selects_a_preset_and_the_file_still_wins(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('preset = "strict"\n')
    strict = load_policy(path)
    assert strict.preset == "strict" and [r.name for r in strict.rules] == [r.name for r in load_preset("strict").rules]
    case = {"nsfw": 0.85, "min_face_age": 17.0}
    assert strict.decide(case).action == "quarantine" and load_preset("balanced").decide(case).action == "allow"
    path.write_text('preset = "lenient"\non_undecodable = "reject"\n[[rule]]\nname = "mine"\n'
                    'when = { nsfw = ">= 0.5" }\naction = "flag"\n')
    mixed = load_policy(path)
    assert mixed.rules[0].name == "mine" and mixed.on_undecodable == "reject"  # own rules first, own settings win
    assert mixed.decide({"nsfw": 0.6}).rule == "mine"
    path.write_text('preset = "harsh"\n')
    with pytest.raises(PolicyError, match="preset: expected one of strict, balanced, lenient, got 'harsh'"):
        load_policy(path)
    result = cli("policy", "check", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "preset" in result.stderr


def test_balanced_is_the_default_policy_and_strict_is_never_milder() -> None:
    default, presets = load_policy(), {name: load_preset(name) for name in PRESETS}
    rng = np.random.default_rng(3)
    differ = {"strict": 0, "lenient": 0}
    for _ in range(3000):
        signals = random_signals(rng)
        actions = {name: presets[name].decide(signals).action for name in PRESETS}
        assert actions["balanced"] == default.decide(signals).action
        assert SEVERITY[actions["strict"]] >= SEVERITY[actions["balanced"]] >= SEVERITY[actions["lenient"]], signals
        differ["strict"] += actions["strict"] != actions["balanced"]
        differ["lenient"] += actions["lenient"] != actions["balanced"]
    assert min(differ.values()) > 100, differ  # the presets really change decisions
    assert presets["lenient"].decide({}, undecodable=True).action == "flag"
    assert presets["strict"].decide({}, undecodable=True).action == "reject"


def test_policy_explain_shows_each_preset() -> None:
    signals = json.dumps({"explicit": 0.5, "p_minor": 0.4, "nsfw": 0.95})
    result = cli("policy", "explain", "--presets", "--signals", signals)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("under each preset:")[1].strip().splitlines()
    assert lines[0].split()[:2] == ["strict", "quarantine"] and "minor-explicit" in lines[0]
    assert lines[1].split()[:2] == ["balanced", "flag"] and "explicit-nudity" in lines[1]
    assert lines[2].split()[:2] == ["lenient", "allow"]


def test_clip_rules_on_an_uncalibrated_pack_are_refused(test_pack_path: Path, tmp_path: Path) -> None:
    policy = load_policy()
    problems = calibration_problems(policy, [("test", "test", False)])
    assert len(problems) == 1 and "'clip-csam'" in problems[0] and "not calibrated" in problems[0]
    assert calibration_problems(policy, [("nsfw-age", "nsfw-age", False), ("clip", "clip-concepts", True)]) == []
    refused = cli("policy", "check", "--pack", str(test_pack_path))
    assert refused.returncode == 1 and "REFUSED: rule 'clip-csam'" in refused.stderr
    no_clip = tmp_path / "policy.toml"
    no_clip.write_text('[[rule]]\nname = "n"\nwhen = { nsfw = ">= 0.9" }\naction = "flag"\n')
    assert cli("policy", "check", str(no_clip), "--pack", str(test_pack_path)).returncode == 0
    # the same pack with a manifest that says it is calibrated (as the clip builder writes for ViT-L-14/openai)
    calibrated = tmp_path / "calibrated"
    calibrated.mkdir()
    for name in load_pack(test_pack_path).files:
        (calibrated / name).write_bytes((test_pack_path / name).read_bytes())
    manifest = read_manifest(test_pack_path)
    manifest["source"] = {**manifest["source"], "calibrated": True, "calibrated_for": ["check_for_csam"]}
    manifest["files"] = list(manifest["files"])
    write_manifest(calibrated, manifest)
    assert cli("policy", "check", "--pack", str(calibrated)).returncode == 0
    missing = cli("policy", "check", "--pack", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_config_check_warns_loudly_about_clip_rules_on_an_uncalibrated_pack(test_pack_path: Path,
                                                                          tmp_path: Path) -> None:
    from proxy.config import load_config
    from proxy.setup.checks import notes

    body = ('[[clients]]\naccess_key = "a"\nsecret_key = "b"\n[upstream]\nendpoint = "http://127.0.0.1:9"\n'
            'access_key = "x"\nsecret_key = "y"\n[upstream.buckets]\nmedia = "real"\n[inference]\n'
            f'mode = "in-process"\npacks = ["{test_pack_path}"]\n')
    config = tmp_path / "bucketguard.toml"
    config.write_text(body)
    warned = [line for line in notes(load_config(config)) if line.startswith("WARNING")]
    assert len(warned) == 1 and "rule 'clip-csam'" in warned[0] and "'test'" in warned[0]
    policy = tmp_path / "policy.toml"
    policy.write_text('preset = "lenient"\n')
    config.write_text(body + f'[screening]\npolicy = "{policy}"\n')
    assert len([line for line in notes(load_config(config)) if line.startswith("WARNING")]) == 1  # preset's rule
    policy.write_text('[[rule]]\nname = "n"\nwhen = { nsfw = ">= 0.9" }\naction = "flag"\n')
    assert not [line for line in notes(load_config(config)) if line.startswith("WARNING")]
