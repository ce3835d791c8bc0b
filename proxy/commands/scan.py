"""`bucketguard scan`: screen an existing bucket (or a local folder, report only) with the proxy's pipeline."""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from proxy.cli import CommandError

DEFAULT_CONFIG = "bucketguard.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scan", help="scan media already stored (a bucket, or a local folder) with the same pipeline and policy",
        description=("Screen every object of a bucket once, the way uploads are screened. Hits are moved to "
                     "quarantine (copied, verified, then deleted from the bucket). Killed and started again, a "
                     "scan continues where it stopped. Objects already decided are skipped unless --rescan. "
                     "Several scan processes (on several machines, with one PostgreSQL in [database]) started "
                     "on the same bucket share one scan: each object is scanned by one of them."))
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--bucket", help="the bucket as pict-rs names it (default: the only one in the config)")
    target.add_argument("--path", help="a local folder (pict-rs filesystem store, a backup): report only")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default ./{DEFAULT_CONFIG})")
    parser.add_argument("--prefix", default="", help="only keys under this prefix")
    parser.add_argument("--since", help="only objects modified on or after this date (YYYY-MM-DD or ISO time)")
    parser.add_argument("--dry-run", action="store_true", help="report what would happen, change nothing")
    parser.add_argument("--rescan", action="store_true", help="scan objects decided by an earlier scan again")
    parser.add_argument("--relied-on", metavar="PEER",
                        help="re-check exactly the objects decided on this federation peer's word (implies --rescan)")
    parser.add_argument("--concurrency", type=int, default=16, help="objects in flight (default 16)")
    parser.add_argument("--rate", type=float, default=0.0, help="at most this many objects per second")
    parser.add_argument("--lease", type=float, default=60.0,
                        help=("seconds a scanner keeps the objects it took if it dies on another machine "
                              "(default 60; one that dies on this machine is noticed at once)"))
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.set_defaults(handler=run)


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"--since: expected a date like 2026-01-31, got {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    from proxy.config import load_config

    config = load_config(args.config)
    if args.concurrency < 1 or args.rate < 0 or not 1.0 <= args.lease <= 86400:
        raise CommandError("--concurrency must be at least 1, --rate not negative, --lease from 1 to 86400 seconds")
    since = _since(args.since)
    if args.path:
        if not args.dry_run:
            raise CommandError("a local folder is only scanned with --dry-run (bucketguard never moves local "
                               "files); quarantine from a bucket instead")
        report = asyncio.run(_scan_folder(config, Path(args.path), since, args))
    else:
        report = asyncio.run(_scan_bucket(config, args, since))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_summary(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return 0


async def _pipeline(config, db):
    from proxy.app import build_detectors
    from proxy.evidence.quarantine import Quarantine
    from proxy.evidence.store import open_store
    from proxy.screening.cache import VerdictCache
    from proxy.screening.hashlists import HashLists
    from proxy.screening.pipeline import Pipeline
    from proxy.screening.policy import PolicyError, load_policy

    if config.inference.mode == "pull":
        raise CommandError("scan needs detectors it can call: set [inference] mode to in-process or remote")
    try:
        policy = load_policy(config.screening.policy or None)
    except PolicyError as exc:
        raise CommandError(str(exc)) from exc
    lists = HashLists.load(config.screening.allow_lists, config.screening.block_lists,
                           config.screening.pdq_max_distance)
    detectors, close = build_detectors(config)
    store = open_store(config.quarantine)
    quarantine = Quarantine(db.engine, store, retention_days=config.quarantine.retention_days) if db else None
    pipeline = Pipeline(policy=policy, hashlists=lists, cache=VerdictCache(db) if db else None, detectors=detectors,
                        quarantine=quarantine, scan_timeout_s=max(config.screening.scan_timeout_s, 60.0))

    async def cleanup() -> None:
        if close is not None:
            await close()
        await store.close()

    return pipeline, quarantine, cleanup


def _progress(disabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[bytes]}"), TransferSpeedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[counts]}"), disable=disabled, transient=False)


async def _scan_bucket(config, args, since):
    from proxy.jobs.backfill import Backfill, ScanOptions
    from proxy.state import Database
    from proxy.storage.upstream import Upstream

    mapped = config.bucket_map
    bucket = args.bucket or (next(iter(mapped)) if len(mapped) == 1 else None)
    if bucket is None:
        raise CommandError("--bucket is needed: the config maps several buckets, or passes every bucket through")
    real_bucket = config.real_bucket(bucket)
    if real_bucket is None:
        raise CommandError(f"--bucket {bucket}: not a bucket of this config")
    if config.quarantine.store == "s3" and real_bucket == config.quarantine.bucket:
        raise CommandError(f"--bucket {bucket}: that is the quarantine bucket; the evidence in it is not scanned")
    db = Database(config.database.url)
    await db.migrate()
    upstream = Upstream(config.upstream, config.limits)
    await upstream.start()
    pipeline, quarantine, cleanup = await _pipeline(config, db)
    relied = await _relied_on(db, args.relied_on, bucket) if args.relied_on else None
    purger, close_purger = (None, None) if args.dry_run else _pictrs_purger(config)
    options = ScanOptions(bucket, real_bucket, args.prefix, since, args.dry_run, args.rescan or relied is not None,
                          args.concurrency,
                          args.rate, args.lease)
    counts: Counter[str] = Counter()
    try:
        with _progress(args.no_progress or args.json) as progress:
            task = progress.add_task("listing", total=None, bytes="", counts="")
            moved = [0]

            def advance(outcome: str, size: int) -> None:
                counts[outcome] += 1
                moved[0] += size
                progress.update(task, bytes=f"{moved[0] / 1e6:.1f} MB here",
                                counts=" ".join(f"{k}:{v}" for k, v in sorted(counts.items())))

            backfill = Backfill(db, upstream, pipeline, quarantine, config.limits, options, progress=advance,
                                purger=purger)
            backfill.only_keys = relied
            resumed = await backfill.run.open()
            refresher = asyncio.create_task(_fleet_progress(backfill, progress, task, resumed))
            try:
                report = await backfill.scan()
            finally:
                refresher.cancel()
            report["resumed"] = resumed
            if relied is not None:
                report["rechecked"] = await _rechecked(db, args.relied_on, bucket, relied, report)
    finally:
        if close_purger is not None:
            await close_purger()
        await cleanup()
        await upstream.close()
        await db.close()
    return report


def _pictrs_purger(config):
    """With [pictrs] endpoint set, hits are purged from pict-rs too (aliases found as pictrs.py explains)."""
    from proxy.integrations.pictrs import PictrsError, purger_from_config

    try:
        return purger_from_config(config)
    except PictrsError as exc:
        raise CommandError(str(exc)) from exc


async def _relied_on(db, peer: str, bucket: str) -> frozenset[str]:
    """The keys whose landing relied on `peer` and that were not re-checked since (proxy.federation)."""
    from proxy.federation.store import FederationStore

    return frozenset(row["key"] for row in await FederationStore(db).relied_on(peer, bucket))


async def _rechecked(db, peer: str, bucket: str, keys: frozenset[str], report: dict) -> int:
    """Mark the selection re-checked once every object of it was decided again (or is gone)."""
    from proxy.federation.store import FederationStore

    if report.get("dry_run") or report["outcomes"].get("error") or report["outcomes"].get("pending"):
        return 0
    return await FederationStore(db).mark_rechecked(peer, bucket, keys)


async def _fleet_progress(backfill, progress, task, resumed: bool) -> None:
    """The bar shows the whole run (every scanner sharing it), read from the database once a second."""
    while True:
        report = await backfill.run.report()
        decided = report["objects"] - report["outcomes"].get("pending", 0)
        progress.update(task, description="resuming" if resumed else "scanning",
                        total=report["objects"] if report["listing_done"] else None, completed=decided)
        await asyncio.sleep(1.0)


async def _scan_folder(config, folder: Path, since, args):
    from proxy.storage.spool import SpooledBody

    if not folder.is_dir():
        raise CommandError(f"--path {folder}: no such folder")
    pipeline, _, cleanup = await _pipeline(config, None)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (
        since is None or datetime.fromtimestamp(p.stat().st_mtime, UTC) >= since))
    outcomes: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    hits = []
    try:
        with _progress(args.no_progress or args.json) as progress:
            task = progress.add_task("scanning", total=len(files), bytes="", counts="")
            for path in files:
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                decision = await pipeline.decide(SpooledBody.from_bytes(path.read_bytes()), content_type,
                                                 allow_defer=False)
                outcome = {"allow": "clean", "flag": "flagged"}.get(decision.action, f"would-{decision.action}")
                outcomes[outcome] += 1
                if decision.rule:
                    rules[decision.rule] += 1
                if outcome != "clean":
                    hits.append({"key": str(path.relative_to(folder)), "outcome": outcome, "rule": decision.rule})
                progress.update(task, advance=1, counts=" ".join(f"{k}:{v}" for k, v in sorted(outcomes.items())))
    finally:
        await cleanup()
    return {"path": str(folder), "dry_run": True, "objects": len(files), "outcomes": dict(sorted(outcomes.items())),
            "rules": dict(sorted(rules.items())), "hits": hits}


def _print_summary(report: dict) -> None:
    from proxy.commands.output import is_terminal, print_table

    print_table(f"scan of {report.get('bucket') or report.get('path')}: {report['objects']} objects"
                + (" (dry run)" if report.get("dry_run") else ""), ("outcome", "objects"),
                report["outcomes"].items(), right=("objects",))
    if report["rules"]:
        if not is_terminal():
            print()  # TSV: a blank line between the two tables
        print_table("rules that fired", ("rule", "objects"), report["rules"].items(), right=("objects",))
