"""`bucketguard scan`: screen what is already stored, with the proxy's own pipeline and policy, resumably,
by one process or by several processes on several machines sharing one run through the database.

A scan run is a row in `scan_runs`; every object it lists is a row in `scan_objects` keyed by (run, key).
Every scanner of the same target joins the same unfinished run (joined under a database-wide lock, so two
scanners starting together never make two runs). The listing is leased: one scanner at a time pages through
the bucket, each page inserted together with its continuation token (re-inserting a page changes nothing);
if that scanner dies, another takes the listing over from the saved token when the lease runs out. Objects
are leased in small batches (an UPDATE over a materialised `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL,
one atomic statement under SQLite's write lock); a scanner renews its leases while it works, and its
outcomes are written in batches, each only while the object is still leased to it, so an object has
exactly one outcome. A scanner killed on this machine is noticed at once (its pid is gone); one killed
elsewhere when its leases run out. The report and the progress are computed from the rows, so they are
the whole fleet's. Hits are moved: recorded in quarantine (bytes verified by SHA-256), then deleted from
the bucket; a hit that was already recorded before a crash is not recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, select

from proxy.jobs.scan_run import MIGRATIONS, ScanOptions, ScanRun, scan_objects, scan_runs
from proxy.s3.errors import S3Error
from proxy.screening.upload import Upload
from proxy.state import Database
from proxy.storage.spool import SpooledBody

__all__ = ["MIGRATIONS", "Backfill", "ScanOptions", "ScanRun", "scan_objects", "scan_runs"]

LANDING = {"allow": "clean", "flag": "flagged"}


class Backfill:
    #: When set, only these keys are listed (`scan --relied-on PEER`: what relied on a distrusted peer).
    only_keys: frozenset[str] | None = None

    def __init__(self, db: Database, upstream: Any, pipeline: Any, quarantine: Any, limits: Any,
                 options: ScanOptions, *, progress: Callable[[str, int], None] | None = None,
                 owner: str | None = None, flush_every: int = 64, poll_s: float = 0.2,
                 purger: Any = None) -> None:
        self.db = db
        self.upstream = upstream
        self.pipeline = pipeline
        self.quarantine = quarantine
        self.limits = limits
        self.options = options
        self.run = ScanRun(db, options, owner=owner)
        self.progress = progress or (lambda outcome, size: None)
        self.flush_every = flush_every
        self.purger = purger  # proxy.integrations.pictrs.PictrsPurger: hits leave pict-rs too
        self.poll_s = poll_s
        self._next_start = 0.0
        self._outcomes: list[dict[str, str]] = []
        self._flushed_at = time.monotonic()
        self._flush_lock = asyncio.Lock()
        self._listed: asyncio.Event | None = None  # set when this scanner adds a page: its claims need not wait
        # what the scan learns of the bytes goes to the verdict cache in the outcomes' batches, not one write each
        self.cache = getattr(pipeline, "cache", None)
        if self.cache is not None:
            self.cache.hold_writes(flush_every)

    async def list_all(self) -> int:
        """List the bucket into the run while this scanner holds the listing; returns the objects listed."""
        listed = 0
        while True:
            state = await self.run.take_listing()
            if state is None:
                return listed  # another scanner is listing
            token, done = state
            if done:
                return listed
            page = await self.upstream.list_objects_v2(self.options.real_bucket, prefix=self.options.prefix,
                                                       max_keys=1000, continuation_token=token)
            objects = [o for o in page.objects if not o["Key"].startswith(".bucketguard/")
                       and (self.options.since is None or o["LastModified"] >= self.options.since)
                       and (self.only_keys is None or o["Key"] in self.only_keys)]
            if await self.run.add_page(objects, page.next_token, not page.is_truncated, after=token):
                listed += len(objects)
                if self._listed is not None:
                    self._listed.set()

    async def _lister(self) -> None:
        """Keep trying to list until the listing is done (another scanner may hold it, or die holding it)."""
        while True:
            await self.list_all()
            if (await self.run.listing_state())[1]:
                return
            await asyncio.sleep(max(self.poll_s, min(self.options.lease_s / 4, 2.0)))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(max(self.options.lease_s / 3, 0.05))
            await self.run.renew()

    async def _throttle(self) -> None:
        if self.options.rate <= 0:
            return
        now = time.monotonic()
        self._next_start = max(self._next_start, now) + 1.0 / self.options.rate
        wait = self._next_start - 1.0 / self.options.rate - now
        if wait > 0:
            await asyncio.sleep(wait)

    async def scan(self) -> dict[str, Any]:
        """Join (or start) the run, list while nobody else does, scan leased objects until none is left."""
        await self.run.open()
        await self.run.release_dead()
        lister = asyncio.create_task(self._lister())
        try:
            await self.process_all()
            if lister.done():
                await lister  # its failure, if it failed
            # else: another scanner listed, and this one's lister sleeps between its polls (up to 2 s); the
            # listing is done (process_all ends only then), so nothing is left for it to do
        finally:
            lister.cancel()
        await self.run.finish()
        return await self.run.report()

    async def process_all(self) -> None:
        """Scan objects leased in batches until the run has none left that this scanner could take."""
        concurrency = self.options.concurrency
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=concurrency)
        listed = self._listed = asyncio.Event()

        async def producer() -> None:
            idle = 0
            while True:
                batch = await self.run.claim(concurrency)
                earlier = set() if self.options.rescan else await self.run.decided_earlier(batch)
                for row in batch:
                    row["decided_earlier"] = row["key"] in earlier
                    await queue.put(row)
                if batch:
                    idle = 0
                    continue
                await self.flush()  # scanners waiting for each other's objects must see them decided
                listing_done, others = await self.run.waiting()
                if listing_done and others == 0:
                    break
                idle += 1
                if idle % 10 == 1:
                    await self.run.release_dead()
                # the next page this scanner lists wakes it at once (the first claim usually comes before the
                # first page: a plain sleep cost every scan its first poll_s); another scanner's, at the next poll
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listed.wait(), self.poll_s)
                listed.clear()
            for _ in range(concurrency):
                await queue.put({})

        async def worker() -> None:
            while True:
                row = await queue.get()
                if not row:
                    return
                await self._throttle()
                outcome = await self.process(row)
                self.progress(outcome, int(row["size"]))

        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await asyncio.gather(producer(), *(worker() for _ in range(concurrency)))
        finally:
            heartbeat.cancel()
            await self.flush()

    async def _decided(self, key: str, outcome: str, rule: str = "", detail: str = "", sha256: str = "") -> None:
        self._outcomes.append({"key": key, "outcome": outcome, "rule": rule, "detail": detail, "sha256": sha256})
        if len(self._outcomes) >= self.flush_every or time.monotonic() - self._flushed_at > 1.0:
            await self.flush()

    async def flush(self) -> None:
        """Write the buffered outcomes in one transaction (and the verdict-cache entries held with them)."""
        async with self._flush_lock:
            batch, self._outcomes = self._outcomes, []
            self._flushed_at = time.monotonic()
            if self.cache is not None:
                await self.cache.flush()
            await self.run.write_outcomes(batch)

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
        if not o.rescan and (row["decided_earlier"] if "decided_earlier" in row
                             else await self.run.decided_before(key, row["etag"], int(row["size"]))):
            await self._decided(key, "skipped", detail="decided by an earlier scan (same ETag and size)")
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
                        await self._decided(key, outcome, recorded[1], "moved before an interruption")
                        return outcome
                    await self._decided(key, "gone", detail="deleted before it was scanned")
                    return "gone"
                await self._decided(key, "error", detail=f"{exc.code}: {exc.message}")
                return "error"
            content_type = headers.get("content-type", "application/octet-stream")
            decision = await self.pipeline.decide(body, content_type, allow_defer=False)
            if decision.action == "refuse":
                await self._decided(key, "error", decision.rule, "the detectors did not answer")
                return "error"
            if o.dry_run:
                outcome = LANDING.get(decision.action, f"would-{decision.action}")
                await self._decided(key, outcome, decision.rule, decision.reason, body.sha256)
                return outcome
            upload = Upload(o.bucket, o.real_bucket, key, "backfill", content_type, body)
            if not (decision.action in ("quarantine", "reject") and await self._recorded(key, body.sha256)):
                await self.pipeline.act(upload, decision, actor="backfill")
            if decision.action in ("quarantine", "reject"):
                # the version read, by id where the bucket keeps versions: a plain delete would only add a
                # delete marker and leave the caught bytes readable by versionId
                await self.upstream.delete_object(o.real_bucket, key, headers.get("x-amz-version-id", ""))
                if self.purger is not None:  # in quarantine and out of the bucket: out of pict-rs too
                    await self.purger.purge_moved(self.db.engine, bucket=o.bucket, key=key, sha256=body.sha256,
                                                  actor="backfill")
            outcome = LANDING.get(decision.action, {"quarantine": "quarantined", "reject": "rejected"}.get(
                decision.action, decision.action))
            await self._decided(key, outcome, decision.rule, decision.reason, body.sha256)
            return outcome
        finally:
            body.close()
