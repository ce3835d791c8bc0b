"""The verdict cache: what is known about exact bytes (by SHA-256), so they are decoded and scanned once.

Every field is a fact about the BYTES alone, never about the request that brought them: the detectors'
signals, whether the bytes are media (sniffed and probed, never the declared type), and the PDQ hashes of
every sampled frame in its eight orientations. The same bytes under any Content-Type get the same entry, so
they get the same verdict. It keeps signals, not actions: a policy change re-evaluates cached signals without
running the models again, and an entry made by other packs than the current ones is scanned again.
`allowed_hashes` is the operator's allow list in the database (a released false positive lands there, bound
to its SHA-256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Boolean, Column, Connection, String, Table, Text, literal, literal_column, select
from sqlalchemy.exc import IntegrityError

from proxy.screening.hashing import FrameHashes
from proxy.state import Database, Migration, add_missing_columns, create_tables, metadata, now_text

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


class VerdictCache:
    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    async def lookup(self, sha256: str) -> tuple[bool, CachedScan | None]:
        """Whether the operator allowed these bytes, and what the detectors said of them: one query."""
        allowed = select(allowed_hashes.c.sha256).where(allowed_hashes.c.sha256 == sha256).exists()
        query = select(allowed.label("allowed"), verdict_cache.c.packs_json, verdict_cache.c.signals_json,
                       verdict_cache.c.frames_json, verdict_cache.c.undecodable, verdict_cache.c.media).select_from(
            select(literal(sha256).label("sha256")).subquery("probe").outerjoin(
                verdict_cache, verdict_cache.c.sha256 == literal_column("probe.sha256")))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().one()
        if row["packs_json"] is None:
            return bool(row["allowed"]), None
        frames = FrameHashes.from_json(row["frames_json"]) if row["frames_json"] else None
        return bool(row["allowed"]), CachedScan(json.loads(row["packs_json"]), json.loads(row["signals_json"]),
                                                frames, bool(row["undecodable"]), bool(row["media"]))

    async def put(self, sha256: str, scan: CachedScan) -> None:
        values = {"packs_json": json.dumps(scan.packs, sort_keys=True), "signals_json": json.dumps(scan.signals),
                  "pdq": scan.pdq, "frames_json": scan.frames.to_json() if scan.frames is not None else "",
                  "undecodable": scan.undecodable, "media": scan.media, "updated_at": now_text()}
        async with self._engine.begin() as conn:
            result = await conn.execute(verdict_cache.update().where(verdict_cache.c.sha256 == sha256).values(**values))
            if result.rowcount == 0:
                try:
                    async with conn.begin_nested():
                        await conn.execute(verdict_cache.insert().values(sha256=sha256, **values))
                except IntegrityError:
                    pass  # another replica cached the same bytes at the same moment

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
