"""The rows of a scan run, shared by every scanner of one bucket: joining the run, the listing lease, object
leases (taken in batches, renewed while held, freed at once when their scanner died on this machine, else
when they run out), outcomes written in batches and only by the object's holder, and the fleet's report.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from proxy.state import Database, Migration, add_missing_columns, create_tables, metadata, now_text

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
    Column("lister", String(200), nullable=False, server_default=""),
    Column("lister_until", Float, nullable=False, server_default="0"),
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
    Column("owner", String(200), nullable=False, server_default=""),
    Column("lease_until", Float, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("decided_by", String(200), nullable=False, server_default=""),
    Index("scan_objects_by_outcome", "run_id", "outcome", "key"),
)

MIGRATIONS = [
    Migration("backfill-0001", create_tables(scan_runs, scan_objects)),
    Migration("backfill-0002-leases", add_missing_columns(scan_objects, "owner", "lease_until", "attempts",
                                                          "decided_by")),
    Migration("backfill-0003-lister", add_missing_columns(scan_runs, "lister", "lister_until")),
]

_JOIN_LOCK = 0x7363616E  # "scan": one scanner at a time joins or creates a run

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
    lease_s: float = 60.0  # how long a dead scanner on another machine keeps its objects


def _machine() -> str:
    """This machine as scanners name it: host name and kernel boot id (two hosts or containers that share a
    host name rarely share a boot id; pids are only comparable under the same boot and pid namespace)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "noboot"
    namespace = os.stat("/proc/self/ns/pid").st_ino if os.path.exists("/proc/self/ns/pid") else 0
    return f"{socket.gethostname()}:{boot}:{namespace}"


def scanner_id() -> str:
    """This scanner's name in the database: machine, pid and a random tag (a pid can be reused)."""
    return f"{_machine()}/{os.getpid()}/{secrets.token_hex(4)}"


def _dead_here(owner: str) -> bool:
    """True for a scanner of this machine (same host, boot and pid namespace) whose process is gone."""
    machine, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if machine != _machine() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class ScanRun:
    """One run's rows: joining it, the listing lease, object leases, outcomes and the report."""

    def __init__(self, db: Database, options: ScanOptions, *, owner: str | None = None) -> None:
        self.db = db
        self._engine = db.engine
        self.options = options
        self.owner = owner or scanner_id()
        self.run_id = 0

    async def open(self) -> bool:
        """Join the unfinished run for the same target and options, or start one; True when joined."""
        o = self.options
        target = f"s3://{o.real_bucket}"
        since = o.since.isoformat() if o.since else ""
        async with self.db.exclusive(_JOIN_LOCK) as conn:
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

    async def take_listing(self) -> tuple[str, bool] | None:
        """Lease the listing (or renew it); (token, done) when this scanner holds it, None when another does."""
        now = time.time()
        async with self._engine.connect() as conn:
            holder = (await conn.execute(select(scan_runs.c.lister, scan_runs.c.lister_until).where(
                scan_runs.c.id == self.run_id))).one()
        free = or_(scan_runs.c.lister == self.owner, scan_runs.c.lister_until < now)
        if holder.lister and holder.lister != self.owner and _dead_here(holder.lister):
            free = or_(free, scan_runs.c.lister == holder.lister)
        async with self._engine.begin() as conn:
            taken = await conn.execute(update(scan_runs).where(and_(scan_runs.c.id == self.run_id, free)).values(
                lister=self.owner, lister_until=now + self.options.lease_s))
        if taken.rowcount != 1:
            return None
        return await self.listing_state()

    async def add_page(self, objects: list[dict[str, Any]], next_token: str, done: bool,
                       *, after: str | None = None) -> bool:
        """Insert a listed page and move the checkpoint; with `after`, only if the checkpoint is still there
        and this scanner still holds the listing (False otherwise: another scanner took it over)."""
        rows = [{"run_id": self.run_id, "key": item["Key"], "size": int(item["Size"]),
                 "etag": str(item["ETag"]).strip('"'), "outcome": "pending", "rule": "", "detail": "", "sha256": "",
                 "owner": "", "lease_until": 0.0, "attempts": 0, "decided_by": ""} for item in objects]
        insert = (postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert)(scan_objects)
        condition = scan_runs.c.id == self.run_id
        if after is not None:
            condition = and_(condition, scan_runs.c.listing_token == after, scan_runs.c.lister == self.owner)
        async with self._engine.begin() as conn:
            moved = await conn.execute(update(scan_runs).where(condition).values(
                listing_token=next_token, listing_done=done, lister_until=time.time() + self.options.lease_s))
            if moved.rowcount != 1:
                await conn.rollback()
                return False
            if rows:  # listed before a crash or by a scanner that lost its lease: already there
                await conn.execute(insert.on_conflict_do_nothing(index_elements=["run_id", "key"]), rows)
        return True

    async def release_dead(self) -> int:
        """Free the objects leased by scanners of this machine that are no longer running."""
        async with self._engine.connect() as conn:
            owners = (await conn.execute(select(scan_objects.c.owner).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.outcome == "pending",
                scan_objects.c.lease_until >= time.time())).distinct())).scalars().all()
        dead = [owner for owner in owners if owner and owner != self.owner and _dead_here(owner)]
        if not dead:
            return 0
        async with self._engine.begin() as conn:
            freed = await conn.execute(update(scan_objects).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.outcome == "pending",
                scan_objects.c.owner.in_(dead))).values(lease_until=0.0))
        return int(freed.rowcount)

    async def claim(self, limit: int) -> list[dict[str, Any]]:
        """Lease up to `limit` pending objects nobody holds, in key order."""
        now = time.time()
        free = and_(scan_objects.c.run_id == self.run_id, scan_objects.c.outcome == "pending",
                    scan_objects.c.lease_until < now)
        keys = select(scan_objects.c.key).where(free).order_by(scan_objects.c.key).limit(limit)
        if self.db.dialect == "postgresql":
            # A materialised CTE: as `key IN (subquery)` PostgreSQL may run the LIMIT ... SKIP LOCKED subquery
            # more than once and take more than `limit` rows.
            picked = keys.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            chosen = scan_objects.c.key == picked.c.key
        else:
            chosen = scan_objects.c.key.in_(keys)  # one statement under SQLite's write lock
        async with self._engine.begin() as conn:
            rows = (await conn.execute(update(scan_objects).where(and_(free, chosen)).values(
                owner=self.owner, lease_until=now + self.options.lease_s, attempts=scan_objects.c.attempts + 1,
            ).returning(scan_objects))).mappings().all()
        return sorted((dict(r) for r in rows), key=lambda r: r["key"])

    async def renew(self) -> None:
        """Extend the leases of the objects this scanner holds."""
        async with self._engine.begin() as conn:
            await conn.execute(update(scan_objects).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.owner == self.owner,
                scan_objects.c.outcome == "pending")).values(lease_until=time.time() + self.options.lease_s))

    async def waiting(self) -> tuple[bool, int]:
        """(listing done, pending objects that another scanner holds or that are free)."""
        async with self._engine.connect() as conn:
            done = bool((await conn.execute(select(scan_runs.c.listing_done).where(
                scan_runs.c.id == self.run_id))).scalar_one())
            others = int((await conn.execute(select(func.count()).select_from(scan_objects).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.outcome == "pending",
                or_(scan_objects.c.owner != self.owner, scan_objects.c.lease_until < time.time()))))).scalar_one())
        return done, others

    async def pending(self, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(scan_objects).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.outcome == "pending",
            )).order_by(scan_objects.c.key).limit(limit))).mappings().all()
        return [dict(r) for r in rows]

    async def decided_earlier(self, rows: list[dict[str, Any]]) -> set[str]:
        """Keys of `rows` that an earlier run over this bucket decided with the same ETag and size: one query
        for a whole claimed batch."""
        if not rows:
            return set()
        async with self._engine.connect() as conn:
            found = (await conn.execute(select(scan_objects.c.key, scan_objects.c.etag, scan_objects.c.size).join(
                scan_runs, scan_runs.c.id == scan_objects.c.run_id).where(and_(
                    scan_runs.c.target == f"s3://{self.options.real_bucket}", scan_runs.c.dry_run.is_(False),
                    scan_objects.c.run_id != self.run_id, scan_objects.c.key.in_([r["key"] for r in rows]),
                    scan_objects.c.outcome.in_(("clean", "flagged", "skipped")))))).all()
        wanted = {(r["key"], r["etag"], int(r["size"])) for r in rows}
        return {key for key, etag, size in found if (key, etag, int(size)) in wanted}

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
        await self.write_outcomes([{"key": key, "outcome": outcome, "rule": rule, "detail": detail,
                                    "sha256": sha256}])

    async def write_outcomes(self, outcomes: list[dict[str, str]]) -> None:
        """Write a batch of outcomes in one transaction; each only while the object is pending and not leased
        to another scanner (so a scanner whose lease ran out cannot overwrite the one that took over)."""
        if not outcomes:
            return
        statement = update(scan_objects).where(and_(
            scan_objects.c.run_id == self.run_id, scan_objects.c.key == bindparam("b_key"),
            scan_objects.c.outcome == "pending",
            or_(scan_objects.c.owner == self.owner, scan_objects.c.owner == ""),
        )).values(outcome=bindparam("b_outcome"), rule=bindparam("b_rule"), detail=bindparam("b_detail"),
                  sha256=bindparam("b_sha256"), decided_by=self.owner, lease_until=0.0)
        params = [{"b_key": o["key"], "b_outcome": o["outcome"], "b_rule": o.get("rule", ""),
                   "b_detail": o.get("detail", "")[:500], "b_sha256": o.get("sha256", "")} for o in outcomes]
        async with self._engine.begin() as conn:
            await conn.execute(statement, params)

    async def finish(self) -> bool:
        """Close the run once nothing is pending any more (any scanner may; True when it is closed)."""
        async with self._engine.begin() as conn:
            left = (await conn.execute(select(scan_objects.c.key).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.outcome == "pending")).limit(1))).first()
            done = bool((await conn.execute(select(scan_runs.c.listing_done).where(
                scan_runs.c.id == self.run_id))).scalar_one())
            if left is not None or not done:
                return False
            await conn.execute(update(scan_runs).where(and_(scan_runs.c.id == self.run_id,
                                                            scan_runs.c.finished_at == "")).values(
                finished_at=now_text()))
        return True

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
            scanners = (await conn.execute(select(scan_objects.c.decided_by, func.count()).where(and_(
                scan_objects.c.run_id == self.run_id, scan_objects.c.decided_by != "")).group_by(
                scan_objects.c.decided_by))).all()
            listing_done = bool((await conn.execute(select(scan_runs.c.listing_done).where(
                scan_runs.c.id == self.run_id))).scalar_one())
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
                "rules": dict(sorted(by_rule.items())), "listing_done": listing_done,
                "scanners": dict(sorted((str(k), int(v)) for k, v in scanners)),
                "hits": [{"key": k, "outcome": out, "rule": r} for k, out, r in hits]}


