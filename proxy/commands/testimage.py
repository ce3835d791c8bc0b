"""`bucketguard test-image [--out FILE]`: the built-in test image, caught as `test` wherever it is uploaded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "test-image", help="write the built-in test image (it must end in quarantine as `test`)",
        description=("Write a generated PNG whose hashes are on bucketguard's built-in list: upload it through "
                     "Lemmy to check a deployment. It is caught even after pict-rs re-encodes it."))
    parser.add_argument("--out", help="file to write (default: standard output)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from proxy.screening.testimage import builtin_hashes, generate_png

    data = generate_png()
    if args.out:
        Path(args.out).write_bytes(data)
        sha256, _, pdq = builtin_hashes()
        print(f"wrote {args.out} ({len(data)} bytes, sha256 {sha256}, pdq {pdq})", file=sys.stderr)
        return 0
    if sys.stdout.isatty():
        raise CommandError("refusing to write a PNG to a terminal: use --out FILE or redirect the output")
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0
