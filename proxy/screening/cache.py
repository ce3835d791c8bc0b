"""The verdict cache: what is known about exact bytes (by SHA-256), so they are decoded and scanned once.

Every field is a fact about the BYTES alone, never about the request that brought them: the detectors'
signals, whether the bytes are media (sniffed and probed, never the declared type), and the PDQ hashes of
every sampled frame in its eight orientations. The same bytes under any Content-Type get the same entry, so
they get the same verdict. It keeps signals, not actions: a policy change re-evaluates cached signals without
running the models again, and an entry made by other packs than the current ones is scanned again.
`allowed_hashes` is the operator's allow list in the database (a released false positive lands there, bound
to its SHA-256).

Reads and writes come in batches. Lookups made while a query is on its way are answered together by the next
query (one round trip for many concurrent uploads or scanned objects, however many). A lookup is one statement
(the allow list and the cache together); on SQLite it goes to the driver in one hop to its thread, where the
async engine's cursor, execute, fetch and close took four per statement (measured: 0.69 ms of CPU per lookup
before, 0.11 ms after, most of a backfill's own per-object cost). Writes are upserts, one
statement for a batch: a backfill holds them (`hold_writes`) and writes one transaction per batch instead of one
per object; entries still held are seen by this process's lookups. Losing held entries in a crash costs only a
second scan of those bytes: the cache is never the record of a decision.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    CompoundSelect,
    Connection,
    String,
    Table,
    Text,
    bindparam,
    false,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from proxy.screening.hashing import FrameHashes
from proxy.state import Compiled, Database, Migration, add_missing_columns, create_tables, metadata, now_text

verdict_cache = Table(
    "verdict_cache",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("packs_json", Text, nullable=False),
    Column("signals_json", Text, nullable=False),
    Column("pdq", String(64), nullable=False, default=""),
    Column("undecodable", Boolean, nullable=False, default=False),
    Column("media", Boolean, nullable=False, default=True),
    Column("frames_json", Text, nullable=False, default="", server_default=""),
    Column("updated_at", String(40), nullable=False),
)

allowed_hashes = Table(
    "allowed_hashes",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("reason", Text, nullable=False, default=""),
    Column("added_by", String(255), nullable=False, default=""),
    Column("added_at", String(40), nullable=False),
)



def _frames_and_forget_request_facts(conn: Connection) -> None:
    """Add the per-frame PDQ column; drop the entries made before it: their `media` came from the declared
    Content-Type and their PDQ from the first frame only, so they are not facts about the bytes. Each is
    decoded and scanned again on its next upload."""
    add_missing_columns(verdict_cache, "frames_json")(conn)
    conn.execute(verdict_cache.delete())


MIGRATIONS = [Migration("verdict-cache-0001", create_tables(verdict_cache, allowed_hashes)),
              Migration("verdict-cache-0002-frames", _frames_and_forget_request_facts)]


@dataclass(frozen=True)
class CachedScan:
    packs: dict[str, str]
    signals: dict[str, float]
    frames: FrameHashes | None  # None: not hashed (too large to decode)
    undecodable: bool
    media: bool

    @property
    def pdq(self) -> str:
        first = self.frames.first if self.frames is not None else None
        return first.hash_hex if first is not None else ""


#: Lookups answered by one query at most (well under SQLite's 32,766 bound parameters).
LOOKUP_BATCH = 500

Found = tuple[bool, CachedScan | None]


def _lookup_query(shas: Sequence[Any]) -> CompoundSelect:
    """The allow list's rows and the cache's rows for `shas` (values or bind parameters), in one statement:
    (sha256, allowed, packs_json, signals_json, frames_json, undecodable, media)."""
    cached = select(verdict_cache.c.sha256, false().label("allowed"), verdict_cache.c.packs_json,
                    verdict_cache.c.signals_json, verdict_cache.c.frames_json, verdict_cache.c.undecodable,
                    verdict_cache.c.media).where(verdict_cache.c.sha256.in_(shas))
    allowed = select(allowed_hashes.c.sha256, true(), null(), null(), null(), null(), null()).where(
        allowed_hashes.c.sha256.in_(shas))
    return union_all(cached, allowed)


@functools.lru_cache(maxsize=64)
def _sqlite_lookup(count: int) -> Compiled:
    """`_lookup_query` for `count` hashes (parameters s0..s{count-1}), compiled for SQLite."""
    return Compiled(_lookup_query([bindparam(f"s{i}") for i in range(count)]))


def _retrieved(future: asyncio.Future[Found]) -> None:
    if not future.cancelled():
        future.exception()  # every waiter may have gone: never "exception was never retrieved"


class VerdictCache:
    def __init__(self, db: Database) -> None:
        self._engine = db.engine
        self._dialect = db.dialect
        self._held: dict[str, CachedScan] = {}
        self._hold = 0  # entries held before a write; 0: every put is written at once
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, asyncio.Future[Found]] = {}  # lookups for the next query
        self._reader: asyncio.Task[None] | None = None

    def hold_writes(self, batch: int) -> None:
        """Hold up to `batch` entries and write them in one transaction (`flush` writes them earlier)."""
        self._hold = max(0, batch)

    async def lookup(self, sha256: str) -> Found:
        """Whether the operator allowed these bytes, and what is cached of them (answered with the other lookups
        waiting for the same query)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a cache used from another event loop starts afresh
            self._loop, self._waiting, self._reader = loop, {}, None
        future = self._waiting.get(sha256)
        if future is None:
            future = self._waiting[sha256] = loop.create_future()
            future.add_done_callback(_retrieved)
            if self._reader is None or self._reader.done():
                self._reader = loop.create_task(self._answer_waiting())
        allowed, cached = await asyncio.shield(future)  # a waiter cancelled leaves the answer to the others
        held = self._held.get(sha256)
        return allowed, held if held is not None else cached

    async def _answer_waiting(self) -> None:
        """One query per batch of waiting lookups, until none is waiting."""
        while self._waiting:
            batch = {sha: self._waiting.pop(sha) for sha in list(itertools.islice(self._waiting, LOOKUP_BATCH))}
            try:
                found = await self._read(list(batch))
            except Exception as exc:  # every lookup of the batch fails as its own query would have
                for future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:
                for future in batch.values():
                    future.cancel()
                raise
            for sha, future in batch.items():
                if not future.done():
                    future.set_result(found[sha])

    async def _read(self, shas: list[str]) -> dict[str, Found]:
        async with self._engine.connect() as conn:
            if self._dialect == "sqlite":  # one hop to the driver's thread (see the module's docstring)
                driver = (await conn.get_raw_connection()).driver_connection
                lookup = _sqlite_lookup(len(shas))
                rows: Sequence[Sequence[Any]] = list(await driver.execute_fetchall(  # type: ignore[union-attr]
                    lookup.sql, lookup.params({f"s{i}": sha for i, sha in enumerate(shas)})))
            else:
                rows = (await conn.execute(_lookup_query(shas))).all()
        allowed: set[str] = set()
        cached: dict[str, CachedScan] = {}
        for sha, is_allowed, packs, signals, frames, undecodable, media in rows:
            if is_allowed:
                allowed.add(sha)
            else:
                cached[sha] = CachedScan(json.loads(packs), json.loads(signals),
                                         FrameHashes.from_json(frames) if frames else None, bool(undecodable),
                                         bool(media))
        return {sha: (sha in allowed, cached.get(sha)) for sha in shas}

    async def put(self, sha256: str, scan: CachedScan) -> None:
        """Cache what is known of these bytes: at once, or with the batch when writes are held."""
        self._held[sha256] = scan
        if len(self._held) >= self._hold:
            await self.flush()

    async def flush(self) -> None:
        """Write the held entries: one upsert statement in one transaction."""
        if not self._held:
            return
        batch, self._held = self._held, {}
        now = now_text()
        rows: list[dict[str, Any]] = [
            {"sha256": sha256, "packs_json": json.dumps(scan.packs, sort_keys=True),
             "signals_json": json.dumps(scan.signals), "pdq": scan.pdq,
             "frames_json": scan.frames.to_json() if scan.frames is not None else "",
             "undecodable": scan.undecodable, "media": scan.media, "updated_at": now}
            for sha256, scan in batch.items()]
        insert = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(verdict_cache)
        upsert = insert.on_conflict_do_update(index_elements=["sha256"], set_={
            name: insert.excluded[name] for name in rows[0] if name != "sha256"})
        async with self._engine.begin() as conn:  # a failed write loses these entries: they are scanned again
            await conn.execute(upsert, rows)

    async def allow(self, sha256: str, *, reason: str, added_by: str) -> None:
        async with self._engine.begin() as conn:
            exists = (await conn.execute(select(allowed_hashes.c.sha256).where(
                allowed_hashes.c.sha256 == sha256))).first()
            if exists is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(allowed_hashes.insert().values(
                            sha256=sha256, reason=reason, added_by=added_by, added_at=now_text()))
                except IntegrityError:
                    pass  # another replica allowed the same bytes at the same moment
