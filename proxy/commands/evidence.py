"""`bucketguard evidence verify|proof`: check the hash chain of the evidence log, prove one record."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.cli import CommandError
from proxy.commands.quarantine import add_config_option, open_database
from proxy.config import load_config

if TYPE_CHECKING:
    from proxy.evidence.log import VerifyResult


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evidence", help="verify the evidence log's hash chain")
    actions = parser.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    verify = actions.add_parser("verify", help="recompute every record's hash; name the first broken one")
    add_config_option(verify)
    verify.add_argument("--json", action="store_true", help="print one JSON object: ok, count, broken_seq, problem")
    verify.set_defaults(handler=run_verify)
    proof = actions.add_parser("proof", help="write the chain proof of one record (JSON)")
    proof.add_argument("seq", type=int, metavar="SEQ", help="the record's sequence number")
    proof.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    add_config_option(proof)
    proof.set_defaults(handler=run_proof)


def run_verify(args: argparse.Namespace) -> int:
    from proxy.evidence import log as evidence

    config = load_config(args.config)

    async def main() -> VerifyResult:
        async with open_database(config) as db:
            return await evidence.verify(db.engine)

    result = asyncio.run(main())
    if getattr(args, "json", False):
        print(json.dumps({"ok": result.ok, "count": result.count, "broken_seq": result.broken_seq,
                          "problem": result.problem}))
        return 0 if result.ok else 1
    if not result.ok:
        raise CommandError(f"evidence chain broken at record {result.broken_seq}: {result.problem} "
                           f"({result.count} record(s) before it are intact)", status=1)
    print(f"evidence chain intact: {result.count} record(s)")
    return 0


def run_proof(args: argparse.Namespace) -> int:
    from proxy.evidence import log as evidence

    config = load_config(args.config)

    async def main() -> dict[str, Any]:
        async with open_database(config) as db:
            return await evidence.chain_proof(db.engine, args.seq)

    try:
        proof = asyncio.run(main())
    except evidence.EvidenceError as exc:
        raise CommandError(str(exc), status=1) from exc
    text = json.dumps(proof, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0
