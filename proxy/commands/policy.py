"""`bucketguard policy check FILE [--pack DIR]` and `bucketguard policy explain FILE --signals JSON [--presets]`."""

from __future__ import annotations

import argparse
import json
import sys

from proxy.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="check a policy file, or see which rule fires for some signals")
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a policy file and list its rules")
    check.add_argument("file", nargs="?", help="policy TOML (default: the shipped default policy)")
    check.add_argument("--pack", action="append", default=[],
                       help="a model pack the policy will run with (repeatable): CLIP rules on a pack that is not "
                            "calibrated for them are refused")
    check.set_defaults(handler=run_check)
    explain = actions.add_parser("explain", help="show which rule fires for the given signals, and why")
    explain.add_argument("file", nargs="?", help="policy TOML (default: the shipped default policy)")
    explain.add_argument("--signals", required=True, help='JSON object of signals, e.g. \'{"nsfw": 0.9}\'')
    explain.add_argument("--presets", action="store_true",
                         help="also show the decision of each severity preset (strict, balanced, lenient)")
    explain.add_argument("--json", action="store_true",
                         help="print the decision as one JSON object (action, rule, category, reason; presets)")
    explain.set_defaults(handler=run_explain)


def _load(path: str | None):
    from proxy.screening.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise CommandError(str(exc)) from exc


def run_check(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    print(f"{policy.source}: OK (version {policy.version})")
    for index, rule in enumerate(policy.rules, start=1):
        conditions = " and ".join(str(c) for c in rule.conditions)
        category = f" [{rule.category}]" if rule.category else ""
        print(f"  {index}. {rule.name}: {conditions} -> {rule.action}{category}")
    print(f"  undecodable -> {policy.on_undecodable}; non-media -> {policy.on_non_media}; "
          f"detectors unavailable -> {policy.on_unavailable}")
    print(f"  signals used: {', '.join(policy.signals_used) or 'none'}")
    if policy.preset:
        print(f"  preset: {policy.preset} (its rules follow the file's own)")
    problems = _calibration(policy, args.pack)
    for problem in problems:
        print(f"REFUSED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _calibration(policy, pack_paths: list[str]) -> list[str]:
    from inference.detectors.concepts import load_evaluator
    from inference.packs import PackError, load_pack
    from proxy.screening.policy import CLIP_PACK_KINDS, calibration_problems

    packs = []
    for path in pack_paths:
        try:
            pack = load_pack(path)
            calibrated = pack.kind in CLIP_PACK_KINDS and pack.calibrated_for(
                load_evaluator(pack.table_path("rules")).algorithm)
        except (PackError, ValueError, KeyError) as exc:
            raise CommandError(f"--pack {path}: {exc}") from exc
        packs.append((pack.name, pack.kind, calibrated))
    return calibration_problems(policy, packs)


def run_explain(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    try:
        signals = json.loads(args.signals)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--signals: not valid JSON: {exc.msg} at character {exc.pos}") from exc
    if not isinstance(signals, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in signals.values()):
        raise CommandError('--signals: expected a JSON object of names to numbers, like {"nsfw": 0.9}')
    values = {str(k): float(v) for k, v in signals.items()}
    if args.json:
        from dataclasses import asdict

        from proxy.screening.policy import PRESETS, load_preset

        out = {"decision": asdict(policy.decide(values))}
        if args.presets:
            out["presets"] = {name: asdict(load_preset(name).decide(values)) for name in PRESETS}
        print(json.dumps(out))
        return 0
    print("\n".join(policy.explain(values)))
    if args.presets:
        from proxy.screening.policy import PRESETS, load_preset

        print("\nunder each preset:")
        for name in PRESETS:
            decided = load_preset(name).decide(values)
            by = f"by rule {decided.rule!r} ({decided.reason})" if decided.rule else "(no rule fired)"
            print(f"  {name:<9} {decided.action} {by}")
    return 0
