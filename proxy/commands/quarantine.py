"""`bucketguard quarantine list|show|reported|hold|unhold|purge|export`: the operator's quarantine tools.

Every action that changes an item or reads its bytes is written to the evidence log with the actor
(`--actor`, by default ``operator:<login name>``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from proxy.cli import CommandError
from proxy.commands.output import is_terminal, print_table
from proxy.config import Config, load_config

if TYPE_CHECKING:
    from proxy.evidence.quarantine import Quarantine
    from proxy.state import Database

# The database, store and evidence modules (SQLAlchemy, aiobotocore) are imported when a command runs,
# not when `bucketguard` builds its parser, so other commands and --help stay quick.

T = TypeVar("T")
DEFAULT_CONFIG = "bucketguard.toml"
_SQLITE_PREFIX = "sqlite+aiosqlite:///"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"config file (default ./{DEFAULT_CONFIG})")


def default_actor() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator"


@asynccontextmanager
async def open_database(config: Config) -> AsyncIterator[Database]:
    """The configured database, migrated; a missing SQLite file is an error, not a new empty log."""
    from proxy.state import Database, DatabaseUnavailable

    url = config.database.url
    if url.startswith(_SQLITE_PREFIX) and ":memory:" not in url:
        path = Path(url[len(_SQLITE_PREFIX):])
        if not path.is_file():
            raise CommandError(f"database {path} does not exist (check database.url)")
    db = Database(url)
    try:
        try:
            await db.reachable()
        except DatabaseUnavailable as exc:
            raise CommandError(str(exc)) from exc
        await db.migrate()
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def open_quarantine(config: Config) -> AsyncIterator[Quarantine]:
    from proxy.evidence.quarantine import Quarantine
    from proxy.evidence.store import open_store

    async with open_database(config) as db:
        store = open_store(config.quarantine)
        try:
            yield Quarantine(db.engine, store, retention_days=config.quarantine.retention_days)
        finally:
            await store.close()


def run_with_quarantine(args: argparse.Namespace, action: Callable[[Quarantine], Awaitable[T]]) -> T:
    """Load the config, open DB and store, run ``action``; operator-facing failures become one line."""
    from proxy.evidence.log import EvidenceError
    from proxy.evidence.quarantine import QuarantineError
    from proxy.evidence.store import StoreError

    config = load_config(args.config)

    async def main() -> T:
        async with open_quarantine(config) as quarantine:
            return await action(quarantine)

    try:
        return asyncio.run(main())
    except (QuarantineError, StoreError, EvidenceError) as exc:
        raise CommandError(str(exc), status=1) from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quarantine", help="review, report, hold, purge and export caught uploads")
    actions = parser.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list items")
    listing.add_argument("--status", metavar="STATUS",
                         help="only items with this status (quarantined, rejected, flagged, released, "
                              "confirmed, purged)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="show one item and its evidence records")
    show.add_argument("item_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=run_show)

    reported = actions.add_parser("reported",
                                  help="record that the item was reported (retention counts from then)")
    reported.add_argument("item_id", metavar="ID")
    reported.add_argument("--ref", required=True, help="the report's reference (e.g. the NCMEC report id)")
    reported.set_defaults(handler=run_reported)

    hold = actions.add_parser("hold", help="put an item on legal hold: no purge until unhold")
    hold.add_argument("item_id", metavar="ID")
    hold.add_argument("--reason", required=True, help="why it is held (request, case number)")
    hold.set_defaults(handler=run_hold)

    unhold = actions.add_parser("unhold", help="lift an item's legal hold")
    unhold.add_argument("item_id", metavar="ID")
    unhold.set_defaults(handler=run_unhold)

    purge = actions.add_parser("purge", help="delete kept bytes (records and hashes stay)")
    target = purge.add_mutually_exclusive_group(required=True)
    target.add_argument("item_id", metavar="ID", nargs="?", help="one item")
    target.add_argument("--expired", action="store_true", help="every item past retention and not on hold")
    purge.add_argument("--force", action="store_true", help="purge one item before its retention ends")
    purge.add_argument("--dry-run", action="store_true", help="with --expired: list what would be purged")
    purge.set_defaults(handler=run_purge)

    export = actions.add_parser("export", help="write an item's evidence package (zip)")
    export.add_argument("item_id", metavar="ID")
    export.add_argument("--out", required=True, metavar="FILE.zip", help="where to write the zip")
    export.add_argument("--record-only", action="store_true",
                        help="export the records without the bytes (for purged or rejected items)")
    export.set_defaults(handler=run_export)

    release = actions.add_parser("release", help="restore a false positive to its key and allow its SHA-256")
    release.add_argument("item_id", metavar="ID")
    release.set_defaults(handler=run_release)
    confirm = actions.add_parser("confirm", help="mark an item reviewed as real")
    confirm.add_argument("item_id", metavar="ID")
    confirm.set_defaults(handler=run_confirm)

    for action_parser in actions.choices.values():
        add_config_option(action_parser)
        if action_parser not in (listing, show):
            action_parser.add_argument("--actor", default=default_actor(),
                                       help="who is acting, for the evidence log (default: %(default)s)")


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def run_list(args: argparse.Namespace) -> int:
    from proxy.evidence.quarantine import STATUSES

    if args.status is not None and args.status not in STATUSES:
        raise CommandError(f"--status: expected one of {', '.join(STATUSES)}, got {args.status!r}")
    items = run_with_quarantine(args, lambda q: q.list(args.status))
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
        return 0
    print_table(f"quarantine: {len(items)} item(s)",
                ("id", "date", "action", "rule", "category", "key", "size", "status", "hold"),
                ([item["id"], item["created_at"][:19].replace("T", " "), item["action"], item["rule"],
                  item["category"], f"{item['bucket']}/{item['key']}", _size(item["size"]), item["status"],
                  "yes" if item["legal_hold"] else ""] for item in items), right=("size",))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from proxy.evidence.log import records_for_item
    from proxy.integrations.lemmy import attribution_of_item

    async def gather(quarantine: Quarantine) -> dict[str, Any]:
        item = await quarantine.get(args.item_id)
        item["retained_until"] = quarantine.expires_at(item).strftime("%Y-%m-%dT%H:%M:%SZ")
        item["evidence"] = await records_for_item(quarantine.engine, args.item_id)
        attribution = await attribution_of_item(load_config(args.config), quarantine.engine, item)
        if attribution is not None:  # [lemmy] configured: the uploader, and the posts/comments using it
            item["attribution"] = attribution
        return item

    item = run_with_quarantine(args, gather)
    if args.json:
        print(json.dumps(item, indent=2, ensure_ascii=False))
        return 0
    fields = [(name, "" if value is None else json.dumps(value, ensure_ascii=False) if isinstance(value, dict)
               else str(value)) for name, value in item.items() if name != "evidence"]
    print_table(f"item {item['id']}", ("field", "value"), fields, header=False)
    if not is_terminal():
        print()
    print_table("evidence records", ("seq", "time", "event", "actor", "detail"),
                ([record["seq"], record["time"], record["event"], record["actor"],
                  json.dumps(record["detail"], ensure_ascii=False)] for record in item["evidence"]))
    return 0


def run_reported(args: argparse.Namespace) -> int:
    record = run_with_quarantine(
        args, lambda q: q.mark_reported(args.item_id, ref=args.ref, actor=args.actor))
    print(f"{args.item_id}: reported ({args.ref}); retention now counts from {record['time'][:10]} "
          f"(evidence record {record['seq']})")
    return 0


def run_hold(args: argparse.Namespace) -> int:
    record = run_with_quarantine(args, lambda q: q.hold(args.item_id, reason=args.reason, actor=args.actor))
    print(f"{args.item_id}: on legal hold (evidence record {record['seq']})")
    return 0


def run_unhold(args: argparse.Namespace) -> int:
    record = run_with_quarantine(args, lambda q: q.unhold(args.item_id, actor=args.actor))
    print(f"{args.item_id}: legal hold lifted (evidence record {record['seq']})")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    if args.expired and args.force:
        raise CommandError("--force applies to one item, not to --expired")
    if args.dry_run and not args.expired:
        raise CommandError("--dry-run applies to --expired")
    if args.item_id:
        record = run_with_quarantine(
            args, lambda q: q.purge(args.item_id, actor=args.actor, force=args.force))
        forced = " before its retention ended (--force)" if record["detail"]["forced"] else ""
        print(f"{args.item_id}: bytes purged{forced} (evidence record {record['seq']})")
        return 0
    if args.dry_run:
        items = run_with_quarantine(args, lambda q: q.expired())
        verb = "would purge"
    else:
        items = run_with_quarantine(args, lambda q: q.purge_expired(actor=args.actor))
        verb = "purged"
    for item in items:
        print(f"{verb} {item['id']} {item['sha256']} {item['bucket']}/{item['key']}")
    print(f"{verb} {len(items)} item(s)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from proxy.evidence.export import export_item
    from proxy.integrations.lemmy import attribution_of_item

    out = Path(args.out)
    config = load_config(args.config)

    async def export(q: Quarantine) -> dict[str, Any]:
        attribution = await attribution_of_item(config, q.engine, await q.get(args.item_id))
        return await export_item(q, args.item_id, out, actor=args.actor, record_only=args.record_only,
                                 attribution=attribution)

    record = run_with_quarantine(args, export)
    print(f"{args.item_id}: exported to {out} (evidence record {record['seq']})")
    return 0


def run_release(args: argparse.Namespace) -> int:
    from proxy.admin.review import release

    config = load_config(args.config)

    async def action(quarantine):
        from proxy.state import Database

        db = Database(config.database.url)
        try:
            return await release(quarantine, config, db, args.item_id, actor=args.actor)
        finally:
            await db.close()

    record = run_with_quarantine(args, action)
    print(f"{args.item_id}: released to its original key and allow-listed (evidence record {record['seq']})")
    return 0


def run_confirm(args: argparse.Namespace) -> int:
    from proxy.admin.review import confirm

    record = run_with_quarantine(args, lambda q: confirm(q, args.item_id, actor=args.actor))
    print(f"{args.item_id}: confirmed as real (evidence record {record['seq']})")
    return 0
