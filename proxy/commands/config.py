"""`bucketguard config check FILE`: validate a config file the way start-up does."""

from __future__ import annotations

import argparse

from proxy.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="check a config file")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a config file and print what it sets up")
    check.add_argument("file", help="path to the TOML config file")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: OK")
    print(f"  listen      {config.server.listen} (region {config.server.region})")
    print(f"  clients     {', '.join(c.access_key for c in config.clients)}")
    print(f"  upstream    {config.upstream.endpoint} ({config.upstream.addressing} addressing)")
    print(f"  database    {config.database.url}")
    print(f"  inference   {config.inference.mode}")
    return 0
