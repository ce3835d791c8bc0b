"""`bucketguard policy check FILE` and `bucketguard policy explain FILE --signals JSON`."""

from __future__ import annotations

import argparse
import json

from proxy.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="check a policy file, or see which rule fires for some signals")
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a policy file and list its rules")
    check.add_argument("file", nargs="?", help="policy TOML (default: the shipped default policy)")
    check.set_defaults(handler=run_check)
    explain = actions.add_parser("explain", help="show which rule fires for the given signals, and why")
    explain.add_argument("file", nargs="?", help="policy TOML (default: the shipped default policy)")
    explain.add_argument("--signals", required=True, help='JSON object of signals, e.g. \'{"nsfw": 0.9}\'')
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
    return 0


def run_explain(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    try:
        signals = json.loads(args.signals)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--signals: not valid JSON: {exc.msg} at character {exc.pos}") from exc
    if not isinstance(signals, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in signals.values()):
        raise CommandError('--signals: expected a JSON object of names to numbers, like {"nsfw": 0.9}')
    print("\n".join(policy.explain({str(k): float(v) for k, v in signals.items()})))
    return 0
