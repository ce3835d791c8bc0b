"""The `bucketguard` command: one dispatcher, each subcommand registered by the module that owns it.

A command module exposes ``register(subparsers)``, which adds its parser and sets ``handler`` to a
function taking the parsed arguments and returning an exit status. Errors meant for the operator are
raised as :class:`CommandError` and printed as one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "proxy.commands.serve",
    "proxy.commands.init",
    "proxy.commands.demo",
    "proxy.commands.config",
    "inference.commands",
    "proxy.commands.policy",
    "proxy.commands.testimage",
    "proxy.commands.screen",
    "proxy.commands.scan",
    "proxy.commands.quarantine",
    "proxy.commands.evidence",
    "proxy.commands.federation",
)


class CommandError(Exception):
    """An operator-facing failure: printed as one line, exit status `status`."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bucketguard",
        description=(
            "An S3-compatible proxy for pict-rs that screens every upload before it lands, "
            "keeps what it catches in quarantine as evidence, and scans what is already stored."
        ),
        epilog="Run `bucketguard COMMAND --help` for the options of one command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from proxy.config import ConfigError

    try:
        return int(handler(args) or 0)
    except CommandError as exc:
        print(f"bucketguard: {exc}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"bucketguard: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run through the imported module, so that `python -m proxy.cli` and the command modules share one
    # CommandError class (under -m this file is also loaded as __main__, a second copy).
    from proxy.cli import main as _main

    sys.exit(_main())
