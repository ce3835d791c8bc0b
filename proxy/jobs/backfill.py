"""`bucketguard scan`: screen what is already stored, with the proxy's own pipeline and policy, resumably.

A scan run is a row in `scan_runs`; every object it lists is a row in `scan_objects` keyed by (run, key),
inserted page by page together with the listing's continuation token. Killed at any point, a run started
again with the same target continues: listing from the saved token (re-inserting a page changes nothing),
then every object still `pending`. Outcomes are written per object, and the final report is computed from
those rows, so an interrupted-and-resumed run reports exactly what an uninterrupted one would.
Hits are moved: recorded in quarantine (bytes verified by SHA-256), then deleted from the bucket; a hit
that was already recorded before a crash is not recorded twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Integer, String, Table, Text, and_, func, select, update
from sqlalchemy.exc import IntegrityError

from proxy.s3.errors import S3Error
from proxy.screening.upload import Upload
from proxy.state import Database, Migration, create_tables, metadata, now_text
from proxy.storage.spool import SpooledBody

scan_runs = Table(
    "scan_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", Text, nullable=False),
    Column("prefix", Text, nullable=False, default=""),
    Column("since", String(40), nullable=False, default=""),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("rescan", Boolean, nullable=False, default=False),
    Column("started_at", String(40), nullable=False),
    Column("finished_at", String(40), nullable=False, default=""),
    Column("listing_token", Text, nullable=False, default=""),
    Column("listing_done", Boolean, nullable=False, default=False),
)

scan_objects = Table(
    "scan_objects",
    metadata,
    Column("run_id", Integer, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("etag", String(255), nullable=False),
    Column("outcome", String(32), nullable=False, default="pending"),
    Column("rule", Text, nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
    Column("sha256", String(64), nullable=False, default=""),
)

MIGRATIONS = [Migration("backfill-0001", create_tables(scan_runs, scan_objects))]

LANDING = {"allow": "clean", "flag": "flagged"}


@dataclass(frozen=True)
class ScanOptions:
    bucket: str
    real_bucket: str
    prefix: str = ""
    since: datetime | None = None
    dry_run: bool = False
    rescan: bool = False
    concurrency: int = 16
    rate: float = 0.0  # objects per second, 0 = unlimited


class ScanRun:
    def __init__(self, db: Database, options: ScanOptions) -> None:
        self._engine = db.engine
        self.options = options
        self.run_id = 0

    async def open(self) -> bool:
        """Resume the unfinished run for the same target and options, or start one; True when resumed."""
        o = self.options
        target = f"s3://{o.real_bucket}"
        since = o.since.isoformat() if o.since else ""
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(scan_runs.c.id).where(and_(
                scan_runs.c.target == target, scan_runs.c.prefix == o.prefix, scan_runs.c.since == since,
                scan_runs.c.dry_run == o.dry_run, scan_runs.c.rescan == o.rescan, scan_runs.c.finished_at == "",
            )).order_by(scan_runs.c.id.desc()).limit(1))).first()
            if row is not None:
                self.run_id = int(row.id)
                return True
            result = await conn.execute(scan_runs.insert().values(
                target=target, prefix=o.prefix, since=since, dry_run=o.dry_run, rescan=o.rescan,
                started_at=now_text(), finished_at="", listing_token="", listing_done=False))
            self.run_id = int(result.inserted_primary_key[0])
        return False

    async def listing_state(self) -> tuple[str, bool]:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(scan_runs.c.listing_token, scan_runs.c.listing_done).where(
                scan_runs.c.id == self.run_id))).one()
        return row.listing_token, bool(row.listing_done)

    async def add_page(self, objects: list[dict[str, Any]], next_token: str, done: bool) -> None:
        async with self._engine.begin() as conn:
            for item in objects:
                try:
                    async with conn.begin_nested():
                        await conn.execute(scan_objects.insert().values(
                            run_id=self.run_id, key=item["Key"], size=int(item["Size"]),
                            etag=str(item["ETag"]).strip('"'), outcome="pending", rule="", detail="", sha256=""))
                except IntegrityError:
                    pass  # listed before a crash: already there
            await conn.execute(update(scan_runs).where(scan_runs.c.id == self.run_id).values(
                listing_token=next_token, listing_done=done))

    async def pending(self, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(scan_objects).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.outcome == "pending",
            )).order_by(scan_objects.c.key).limit(limit))).mappings().all()
        return [dict(r) for r in rows]

    async def decided_before(self, key: str, etag: str, size: int) -> bool:
        """Same key, ETag and size already decided by an earlier run over this bucket."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(scan_objects.c.key).join(
                scan_runs, scan_runs.c.id == scan_objects.c.run_id).where(and_(
                    scan_runs.c.target == f"s3://{self.options.real_bucket}", scan_runs.c.dry_run.is_(False),
                    scan_objects.c.run_id != self.run_id, scan_objects.c.key == key, scan_objects.c.etag == etag,
                    scan_objects.c.size == size, scan_objects.c.outcome.in_(("clean", "flagged", "skipped")),
                )).limit(1))).first()
        return row is not None

    async def set_outcome(self, key: str, outcome: str, rule: str = "", detail: str = "", sha256: str = "") -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(scan_objects).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.key == key)).values(
                outcome=outcome, rule=rule, detail=detail[:500], sha256=sha256))

    async def finish(self) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(scan_runs).where(scan_runs.c.id == self.run_id).values(finished_at=now_text()))

    async def report(self) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(scan_objects.c.outcome, scan_objects.c.rule,
                                              func.count(), func.sum(scan_objects.c.size)).where(
                scan_objects.c.run_id == self.run_id).group_by(scan_objects.c.outcome,
                                                               scan_objects.c.rule))).all()
            hits = (await conn.execute(select(scan_objects.c.key, scan_objects.c.outcome, scan_objects.c.rule).where(
                and_(scan_objects.c.run_id == self.run_id,
                     scan_objects.c.outcome.in_(("quarantined", "rejected", "would-quarantine",
                                                 "would-reject", "flagged")))).order_by(scan_objects.c.key))).all()
        outcomes: Counter[str] = Counter()
        by_rule: Counter[str] = Counter()
        total_bytes = 0
        for outcome, rule, count, size in rows:
            outcomes[outcome] += count
            if rule:
                by_rule[rule] += count
            total_bytes += int(size or 0)
        o = self.options
        return {"run": self.run_id, "bucket": o.bucket, "prefix": o.prefix, "dry_run": o.dry_run,
                "objects": sum(outcomes.values()), "bytes": total_bytes, "outcomes": dict(sorted(outcomes.items())),
                "rules": dict(sorted(by_rule.items())),
                "hits": [{"key": k, "outcome": out, "rule": r} for k, out, r in hits]}


class Backfill:
    #: When set, only these keys are listed (`scan --relied-on PEER`: what relied on a distrusted peer).
    only_keys: frozenset[str] | None = None

    def __init__(self, db: Database, upstream: Any, pipeline: Any, quarantine: Any, limits: Any,
                 options: ScanOptions, *, progress: Callable[[str, int], None] | None = None) -> None:
        self.db = db
        self.upstream = upstream
        self.pipeline = pipeline
        self.quarantine = quarantine
        self.limits = limits
        self.options = options
        self.run = ScanRun(db, options)
        self.progress = progress or (lambda outcome, size: None)
        self._next_start = 0.0

    async def list_all(self) -> int:
        token, done = await self.run.listing_state()
        listed = 0
        while not done:
            page = await self.upstream.list_objects_v2(self.options.real_bucket, prefix=self.options.prefix,
                                                       max_keys=1000, continuation_token=token)
            objects = [o for o in page.objects if not o["Key"].startswith(".bucketguard/")
                       and (self.options.since is None or o["LastModified"] >= self.options.since)
                       and (self.only_keys is None or o["Key"] in self.only_keys)]
            token, done = page.next_token, not page.is_truncated
            await self.run.add_page(objects, token, done)
            listed += len(objects)
        return listed

    async def _throttle(self) -> None:
        if self.options.rate <= 0:
            return
        now = time.monotonic()
        self._next_start = max(self._next_start, now) + 1.0 / self.options.rate
        wait = self._next_start - 1.0 / self.options.rate - now
        if wait > 0:
            await asyncio.sleep(wait)

    async def process_all(self) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=self.options.concurrency * 2)

        async def producer() -> None:
            while True:
                batch = await self.run.pending(500)
                if not batch:
                    break
                for row in batch:
                    await queue.put(row)
                await queue.join()
            for _ in range(self.options.concurrency):
                await queue.put({})

        async def worker() -> None:
            while True:
                row = await queue.get()
                try:
                    if not row:
                        return
                    await self._throttle()
                    outcome = await self.process(row)
                    self.progress(outcome, int(row["size"]))
                finally:
                    queue.task_done()

        await asyncio.gather(producer(), *(worker() for _ in range(self.options.concurrency)))

    async def _recorded(self, key: str, sha256: str | None = None) -> tuple[str, str] | None:
        """(action, rule) of a quarantine/reject record already made for this key (and these bytes)."""
        from proxy.evidence.quarantine import quarantine_items

        condition = and_(quarantine_items.c.bucket == self.options.bucket, quarantine_items.c.key == key,
                         quarantine_items.c.action.in_(("quarantine", "reject")))
        if sha256 is not None:
            condition = and_(condition, quarantine_items.c.sha256 == sha256)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(quarantine_items.c.action, quarantine_items.c.rule).where(
                condition).limit(1))).first()
        return None if row is None else (row.action, row.rule)

    async def process(self, row: dict[str, Any]) -> str:
        o = self.options
        key = row["key"]
        if not o.rescan and await self.run.decided_before(key, row["etag"], int(row["size"])):
            await self.run.set_outcome(key, "skipped", detail="decided by an earlier scan (same ETag and size)")
            return "skipped"
        body = SpooledBody(memory_limit=self.limits.memory_buffer_bytes, max_bytes=self.limits.max_object_bytes,
                           spool_dir=self.limits.spool_dir or None)
        try:
            try:
                headers = await self.upstream.read_object(o.real_bucket, key, body)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    # Moved by this run before a crash (recorded, deleted, outcome not yet written)?
                    recorded = None if o.dry_run else await self._recorded(key)
                    if recorded is not None:
                        outcome = {"quarantine": "quarantined", "reject": "rejected"}[recorded[0]]
                        await self.run.set_outcome(key, outcome, recorded[1], "moved before an interruption")
                        return outcome
                    await self.run.set_outcome(key, "gone", detail="deleted before it was scanned")
                    return "gone"
                await self.run.set_outcome(key, "error", detail=f"{exc.code}: {exc.message}")
                return "error"
            content_type = headers.get("content-type", "application/octet-stream")
            decision = await self.pipeline.decide(body, content_type, allow_defer=False)
            if decision.action == "refuse":
                await self.run.set_outcome(key, "error", decision.rule, "the detectors did not answer")
                return "error"
            if o.dry_run:
                outcome = LANDING.get(decision.action, f"would-{decision.action}")
                await self.run.set_outcome(key, outcome, decision.rule, decision.reason, body.sha256)
                return outcome
            upload = Upload(o.bucket, o.real_bucket, key, "backfill", content_type, body)
            if not (decision.action in ("quarantine", "reject") and await self._recorded(key, body.sha256)):
                await self.pipeline.act(upload, decision, actor="backfill")
            if decision.action in ("quarantine", "reject"):
                await self.upstream.delete_object(o.real_bucket, key)
            outcome = LANDING.get(decision.action, {"quarantine": "quarantined", "reject": "rejected"}.get(
                decision.action, decision.action))
            await self.run.set_outcome(key, outcome, decision.rule, decision.reason, body.sha256)
            return outcome
        finally:
            body.close()
