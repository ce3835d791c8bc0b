"""`bucketguard config check FILE`: every check `serve` makes at start-up, plus the upstream answering."""

from __future__ import annotations

import argparse
import json
import sys

from proxy.config import ConfigError, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="check a config file")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="check a config file the way `serve` does at start-up, and print what it sets up",
        description=("Parse the file, then check what `serve` checks before it starts (placeholder secrets, the "
                     "quarantine bucket not served, files readable, folders writable, the database migratable, "
                     "packs loadable) and that the upstream answers with the configured credentials and its "
                     "buckets exist. Each problem is one line naming the key; exit status 1 when there is any."))
    check.add_argument("file", help="path to the TOML config file")
    check.add_argument("--offline", action="store_true",
                       help="skip the checks that reach the upstream and the quarantine bucket over the network")
    check.add_argument("--json", action="store_true", help="print one JSON object: ok, problems, notes")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    from proxy.setup.checks import all_problems, notes

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        return _report(args, [str(exc)], [])
    problems = [f"{args.file}: {p}" for p in all_problems(config, reach_upstream=not args.offline)]
    if problems or args.json:
        return _report(args, problems, notes(config))
    print(f"{args.file}: OK")
    print(f"  listen      {config.server.listen} (region {config.server.region})")
    print(f"  clients     {', '.join(c.access_key for c in config.clients)}")
    served = ("every bucket but the quarantine, names unchanged" if config.passthrough else
              ", ".join(f"{k} -> {v}" for k, v in config.bucket_map.items()) or "every bucket, names unchanged")
    print(f"  upstream    {config.upstream.endpoint} ({config.upstream.addressing} addressing): {served}")
    print(f"  database    {config.database.url}")
    packs = f" ({', '.join(config.inference.packs)})" if config.inference.packs else ""
    print(f"  inference   {config.inference.mode}{packs}")
    print(f"  quarantine  {config.quarantine.store}: "
          f"{config.quarantine.path if config.quarantine.store == 'local' else config.quarantine.bucket}")
    for note in notes(config):
        print(f"  note: {note}")
    return 0


def _report(args: argparse.Namespace, problems: list[str], notes: list[str]) -> int:
    if args.json:
        print(json.dumps({"file": args.file, "ok": not problems, "problems": problems, "notes": notes}))
    else:
        for line in problems:
            print(f"bucketguard: {line}", file=sys.stderr)
    return 1 if problems else 0
