"""Deferred scans: uploads that landed while the detectors were away, scanned as soon as they answer again.

A row per landed-but-unscanned object lives in the database, so pending work survives restarts and kill -9.
Each proxy process runs one worker; replicas claim rows with a lease (compare-and-set on `lease_until`), so
a row is scanned by one of them at a time, and a worker that dies only delays its row until the lease ends.
A hit is copied to quarantine (with its record) and then deleted from the bucket.

The row is written before the object is written upstream (so a crash in between leaves a row, never an
unrecorded object), which is why a row starts `unconfirmed`: the front confirms it once the upstream has
answered the write. A row nobody confirmed (the proxy died in between) becomes due after `confirm_s` and is
then judged by what is really in the bucket. An object that is not (yet) there, or still holds other bytes,
is looked for again until `missing_s` after the upload, then the row ends `missing` with a warning: never
silently closed. A row that keeps failing (detectors away, a crash while scanning it) ends after
`max_attempts` claims as flagged for review, with an evidence record: never retried for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Column, Float, Integer, String, Table, Text, and_, func, select, update

from proxy.s3.errors import S3Error
from proxy.screening.facts import Decision
from proxy.screening.upload import Upload
from proxy.state import Database, Migration, create_tables, metadata, now_text
from proxy.storage.spool import SpooledBody

if TYPE_CHECKING:
    from proxy.config import LimitsConfig
    from proxy.screening.pipeline import Pipeline
    from proxy.storage.upstream import Upstream

log = logging.getLogger("bucketguard.pending")

pending_scans = Table(
    "pending_scans",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("bucket", String(255), nullable=False),
    Column("real_bucket", String(255), nullable=False),
    Column("key", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(255), nullable=False, default=""),
    Column("access_key", String(255), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", String(40), nullable=False),
    Column("state", String(16), nullable=False, default="pending"),  # unconfirmed, pending, done, missing
    Column("outcome", Text, nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", Float, nullable=False, default=0.0),
    Column("next_try", Float, nullable=False, default=0.0),
)

MIGRATIONS = [Migration("pending-0001", create_tables(pending_scans))]


@dataclass(frozen=True)
class PendingRow:
    id: int
    bucket: str
    real_bucket: str
    key: str
    sha256: str
    size: int
    content_type: str
    access_key: str
    confirmed: bool = True
    attempts: int = 1
    created_at: str = ""

    def age_s(self) -> float:
        """Seconds since the upload was recorded."""
        return time.time() - datetime.fromisoformat(self.created_at).timestamp() if self.created_at else 0.0


#: States of a row that still has work to do.
OPEN_STATES = ("unconfirmed", "pending")


class PendingScans:
    def __init__(self, db: Database, *, lease_s: float = 60.0, confirm_s: float = 10.0) -> None:
        self._engine = db.engine
        self.lease_s = lease_s
        self.confirm_s = confirm_s

    async def enqueue(self, upload: Upload, decision: Decision) -> None:
        """Record an upload that is about to land unscanned; it is scanned once `confirm` says it landed."""
        async with self._engine.begin() as conn:
            await conn.execute(pending_scans.insert().values(
                bucket=upload.bucket, real_bucket=upload.real_bucket, key=upload.key, sha256=upload.sha256,
                size=upload.size, content_type=upload.content_type, access_key=upload.access_key,
                reason=decision.reason, created_at=now_text(), state="unconfirmed", outcome="", attempts=0,
                lease_until=0.0, next_try=time.time() + self.confirm_s))

    async def confirm(self, upload: Upload) -> None:
        """The upstream has the object: its rows (these bytes under this key) may be scanned now."""
        async with self._engine.begin() as conn:
            await conn.execute(update(pending_scans).where(and_(
                pending_scans.c.real_bucket == upload.real_bucket, pending_scans.c.key == upload.key,
                pending_scans.c.sha256 == upload.sha256, pending_scans.c.state == "unconfirmed")).values(
                state="pending", next_try=0.0))

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(pending_scans).where(
                pending_scans.c.state.in_(OPEN_STATES)))).scalar_one())

    async def claim(self) -> PendingRow | None:
        """Take one due row for `lease_s` seconds; None when nothing is due (or another replica took it)."""
        now = time.time()
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(pending_scans).where(and_(
                pending_scans.c.state.in_(OPEN_STATES), pending_scans.c.lease_until < now,
                pending_scans.c.next_try <= now)).order_by(pending_scans.c.id).limit(1))).mappings().first()
        if row is None:
            return None
        async with self._engine.begin() as conn:
            taken = await conn.execute(update(pending_scans).where(and_(
                pending_scans.c.id == row["id"], pending_scans.c.lease_until == row["lease_until"],
                pending_scans.c.state == row["state"])).values(lease_until=now + self.lease_s,
                                                            attempts=row["attempts"] + 1))
        if taken.rowcount != 1:
            return None
        return PendingRow(row["id"], row["bucket"], row["real_bucket"], row["key"], row["sha256"], row["size"],
                          row["content_type"], row["access_key"], confirmed=row["state"] == "pending",
                          attempts=row["attempts"] + 1, created_at=row["created_at"])

    async def finish(self, row_id: int, outcome: str, *, state: str = "done") -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(pending_scans).where(pending_scans.c.id == row_id).values(
                state=state, outcome=outcome, lease_until=0.0))

    async def retry_later(self, row_id: int, delay_s: float) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(pending_scans).where(pending_scans.c.id == row_id).values(
                lease_until=0.0, next_try=time.time() + delay_s))

    async def outcomes(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(pending_scans).order_by(pending_scans.c.id))).mappings().all()
        return [dict(r) for r in rows]


class PendingWorker:
    """Scans pending rows one at a time; backs off while the detectors are still away."""

    def __init__(self, pending: PendingScans, pipeline: Pipeline, upstream: Upstream, limits: LimitsConfig, *,
                 idle_s: float = 2.0, backoff_s: float = 5.0, max_backoff_s: float = 600.0, max_attempts: int = 10,
                 missing_s: float = 600.0, on_count: Any = None, purger: Any = None) -> None:
        self.pending = pending
        self.pipeline = pipeline
        self.upstream = upstream
        self.limits = limits
        self.idle_s = idle_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_attempts = max_attempts
        self.missing_s = missing_s
        self.on_count = on_count
        self.purger = purger  # proxy.integrations.pictrs.PictrsPurger: a hit found now leaves pict-rs too
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                if self.on_count is not None:
                    self.on_count(await self.pending.count())
                row = await self.pending.claim()
                if row is None:
                    await asyncio.sleep(self.idle_s)
                    continue
                await self.scan(row)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deferred scan failed; retrying later")
                await asyncio.sleep(self.backoff_s)

    def _delay(self, attempts: int) -> float:
        return min(self.backoff_s * 2 ** max(attempts - 1, 0), self.max_backoff_s)

    async def _not_there(self, row: PendingRow, what: str) -> str:
        """The object is missing or holds other bytes: look again until `missing_s`, then report it."""
        if row.age_s() < self.missing_s:
            await self.pending.retry_later(row.id, min(self.backoff_s, self.missing_s))
            return "looking"
        written = "confirmed written" if row.confirmed else "never confirmed written"
        log.warning("deferred scan of %s/%s: %s %.0f s after the upload (%s); not scanned", row.real_bucket,
                    row.key, what, row.age_s(), written)
        await self.pending.finish(row.id, f"missing: {what} {row.age_s():.0f} s after the upload ({written})",
                                  state="missing")
        return "missing"

    async def scan(self, row: PendingRow) -> str:
        body = SpooledBody(memory_limit=self.limits.memory_buffer_bytes, max_bytes=self.limits.max_object_bytes,
                           spool_dir=self.limits.spool_dir or None)
        try:
            try:
                headers = await self.upstream.read_object(row.real_bucket, row.key, body)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return await self._not_there(row, "the object was not in the bucket")
                raise
            if body.sha256 != row.sha256:
                if not row.confirmed:  # the write may still be on its way: the old bytes say nothing
                    return await self._not_there(row, "the key held other bytes")
                await self.pending.finish(row.id, "replaced: the key now holds other bytes (screened on upload)")
                return "replaced"
            upload = Upload(row.bucket, row.real_bucket, row.key, row.access_key, row.content_type, body)
            if row.attempts > self.max_attempts:
                return await self._give_up(row, upload, row.attempts - 1, "each ended without a verdict")
            decision = await self.pipeline.decide(body, row.content_type, allow_defer=False)
            if decision.action == "refuse":
                if row.attempts >= self.max_attempts:
                    return await self._give_up(row, upload, row.attempts, decision.reason or "no detector answered")
                await self.pending.retry_later(row.id, self._delay(row.attempts))
                return "waiting"
            await self.pipeline.act(upload, decision, actor=decision.decided_by or "deferred-scan")
            if decision.action in ("quarantine", "reject"):  # the version read (see jobs.backfill)
                await self.upstream.delete_object(row.real_bucket, row.key, headers.get("x-amz-version-id", ""))
                if self.purger is not None:
                    await self.purger.purge_moved(self.pipeline.quarantine.engine, bucket=row.bucket, key=row.key,
                                                  sha256=row.sha256, actor="deferred-scan")
            outcome = {"allow": "clean", "flag": "flagged"}.get(decision.action, decision.action)
            await self.pending.finish(row.id, f"{outcome}: {decision.rule or decision.reason}")
            return outcome
        finally:
            body.close()

    async def _give_up(self, row: PendingRow, upload: Upload, tried: int, why: str) -> str:
        """Bounded retries: the object stays, flagged for a reviewer, with an evidence record."""
        reason = f"deferred scan gave up after {tried} attempts: {why}"
        decision = Decision("flag", rule="deferred-scan-gave-up", step="pending", reason=reason,
                            decided_by="deferred-scan")
        await self.pipeline.act(upload, decision, actor="deferred-scan")
        log.warning("deferred scan of %s/%s: %s; flagged for review", row.real_bucket, row.key, reason)
        await self.pending.finish(row.id, f"flagged: {reason}")
        return "flagged"
