"""The federation tables: this instance's feed (outbox), peers and their state, peers' attestations, reject
counts, and the record of every decision taken on a peer's word (reliance).

Peers' rows are synced from the config at start-up; `distrusted` and `trust_override` belong to the
operator's CLI and survive restarts. Every query that counts a peer's word joins `federation_peers`, so a
distrust made by any process stops that peer counting at the next decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    event,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from proxy.federation.hotpath import SqliteHotPath
from proxy.state import Compiled, Database, Migration, create_tables, metadata, now_text

#: Page cache for federation's bulk writes (negative: KiB): the attestation indexes are random-ordered.
SQLITE_CACHE_KIB = -65536

outbox = Table(
    "federation_outbox", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("entry_id", String(32), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("sha256", String(64), nullable=False, default="", index=True),
    Column("verdict", String(16), nullable=False, default=""),
    Column("source", String(64), nullable=False, default=""),
    Column("exp", BigInteger, nullable=False, default=0),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("token", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
)

peers = Table(
    "federation_peers", metadata,
    Column("name", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("config_key", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("kid", String(64), nullable=False),
    #: {kid: {"key": line, "until": iat of the rotation}} of keys this peer rotated away from.
    Column("retired", Text, nullable=False, default="{}"),
    Column("trust", String(32), nullable=False, default=""),
    Column("trust_override", String(32), nullable=True),
    Column("weight", Float, nullable=False, default=1.0),
    Column("distrusted", Boolean, nullable=False, default=False),
    Column("changed_at", String(40), nullable=False, default=""),
    Column("changed_by", String(256), nullable=False, default=""),
    Column("cursor", BigInteger, nullable=False, default=0),
    Column("stored", BigInteger, nullable=False, default=0),
    Column("last_pull_at", String(40), nullable=False, default=""),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
)

attestations = Table(
    "federation_attestations", metadata,
    Column("peer", String(64), primary_key=True),
    Column("att_id", String(32), primary_key=True),
    Column("sha256", String(64), nullable=False, index=True),
    Column("pdq", String(64), nullable=False, default=""),
    Column("verdict", String(16), nullable=False),
    Column("basis", String(16), nullable=False),
    Column("category", String(64), nullable=False, default=""),
    Column("signals", Text, nullable=False, default="{}"),
    Column("packs", Text, nullable=False, default="{}"),
    Column("iat", BigInteger, nullable=False),
    Column("exp", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("token", Text, nullable=False),
    Column("received_at", String(40), nullable=False),
)

counts = Table(
    "federation_counts", metadata,
    Column("peer", String(64), primary_key=True),
    Column("reason", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False, default=0),
)

reliance = Table(
    "federation_reliance", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decided_at", String(40), nullable=False),
    Column("bucket", String(256), nullable=False),
    Column("key", Text, nullable=False),
    Column("sha256", String(64), nullable=False, index=True),
    Column("action", String(16), nullable=False),
    Column("rule", String(256), nullable=False),
    #: ",A,B," so that one peer is selected with LIKE '%,A,%'.
    Column("peers", Text, nullable=False),
    #: [{"peer", "id", "verdict", "token"}]: the signed statements relied on, verifiable by anyone.
    Column("sources", Text, nullable=False),
    Column("rechecked_at", String(40), nullable=False, default=""),
)

MIGRATIONS = [Migration("federation-0001", create_tables(outbox, peers, attestations, counts, reliance))]


@dataclass(frozen=True)
class PeerRow:
    name: str
    url: str
    key: str
    kid: str
    retired: dict[str, dict[str, Any]]
    trust: frozenset[str]
    weight: float
    distrusted: bool
    cursor: int
    stored: int


def _peer(row: Mapping[str, Any]) -> PeerRow:
    trust = row["trust_override"] if row["trust_override"] is not None else row["trust"]
    return PeerRow(row["name"], row["url"], row["key"], row["kid"], json.loads(row["retired"] or "{}"),
                   frozenset(t for t in trust.split(",") if t), float(row["weight"]), bool(row["distrusted"]),
                   int(row["cursor"]), int(row["stored"]))


def _relaxed_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", f"cache_size={SQLITE_CACHE_KIB}"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _usable_query(conditions: list[Any], now: Any) -> Any:
    return select(attestations, peers.c.trust, peers.c.trust_override, peers.c.weight,
                  peers.c.key.label("peer_key"), peers.c.retired.label("peer_retired")).join(
        peers, peers.c.name == attestations.c.peer).where(and_(
            or_(*conditions), attestations.c.revoked.is_(False), attestations.c.exp > now,
            peers.c.distrusted.is_(False)))


#: The two statements of a federated decision, compiled once for SQLite's hot path (proxy.federation.hotpath).
_USABLE_BY_SHA = Compiled(_usable_query([attestations.c.sha256 == bindparam("sha256")], bindparam("now")))
_RELIANCE_INSERT = Compiled(reliance.insert().values({c.name: bindparam(c.name) for c in reliance.c
                                                      if c.name != "id"}))


class FederationStore:
    def __init__(self, db: Database) -> None:
        self.engine = db.engine
        self._relaxed: AsyncEngine | None = None
        file = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        self._hot: SqliteHotPath | None = None
        self._hot_file = file if file and file != ":memory:" and not file.startswith("file:") else None

    def _hot_path(self) -> SqliteHotPath | None:
        if self._hot is None and self._hot_file is not None:
            self._hot = SqliteHotPath(self._hot_file)
        return self._hot

    # -- peers ---------------------------------------------------------------------------------------

    async def sync_peers(self, configured: Iterable[tuple[str, str, str, str, tuple[str, ...], float]]) -> None:
        """Config peers (name, url, key line, kid, trust, weight) into the table; a changed config key resets the
        peer's rotation state and cursor (a new key is a new identity); CLI distrust and overrides stay; a peer
        no longer in the config is removed."""
        configured = list(configured)
        async with self.engine.begin() as conn:
            existing = {r["name"]: r for r in (await conn.execute(select(peers))).mappings()}
            removed = set(existing) - {c[0] for c in configured}
            if removed:  # its attestations stop counting (the lookup joins this table); reliance records stay
                await conn.execute(peers.delete().where(peers.c.name.in_(sorted(removed))))
            for name, url, key, kid, trust, weight in configured:
                values = {"url": url, "trust": ",".join(sorted(trust)), "weight": weight}
                row = existing.get(name)
                if row is None:
                    await conn.execute(peers.insert().values(
                        name=name, config_key=key, key=key, kid=kid, retired="{}", distrusted=False, cursor=0,
                        stored=0, changed_at=now_text(), changed_by="config", **values))
                elif row["config_key"] != key:
                    await conn.execute(update(peers).where(peers.c.name == name).values(
                        config_key=key, key=key, kid=kid, retired="{}", cursor=0, **values))
                else:
                    await conn.execute(update(peers).where(peers.c.name == name).values(**values))

    async def peers(self) -> list[PeerRow]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(peers).order_by(peers.c.name))).mappings().all()
        return [_peer(r) for r in rows]

    async def peer(self, name: str) -> PeerRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(peers).where(peers.c.name == name))).mappings().first()
        return None if row is None else _peer(row)

    async def set_trust(self, name: str, *, distrusted: bool, trust: Iterable[str] | None, weight: float | None,
                        actor: str) -> bool:
        values: dict[str, Any] = {"distrusted": distrusted, "changed_at": now_text(), "changed_by": actor}
        if trust is not None:
            values["trust_override"] = ",".join(sorted(set(trust)))
        if weight is not None:
            values["weight"] = weight
        async with self.engine.begin() as conn:
            result = await conn.execute(update(peers).where(peers.c.name == name).values(**values))
        return result.rowcount == 1

    async def pull_state(self, name: str, *, failures: int, error: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(peers).where(peers.c.name == name).values(
                failures=failures, last_error=error[:500], last_pull_at=now_text()))

    async def peer_table(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(peers).order_by(peers.c.name))).mappings().all()
        return [dict(r) for r in rows]

    # -- counts --------------------------------------------------------------------------------------

    async def add_counts(self, conn: Any, peer: str, found: Mapping[str, int]) -> None:
        for reason, n in found.items():
            updated = await conn.execute(update(counts).where(and_(counts.c.peer == peer, counts.c.reason == reason))
                                         .values(count=counts.c.count + n))
            if updated.rowcount == 0:
                await conn.execute(counts.insert().values(peer=peer, reason=reason, count=n))

    async def counts(self) -> dict[str, dict[str, int]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(counts))).all()
        out: dict[str, dict[str, int]] = {}
        for peer, reason, n in rows:
            out.setdefault(peer, {})[reason] = int(n)
        return out

    # -- attestations (subscriber side) --------------------------------------------------------------

    async def usable(self, sha256: str | None = None, ids: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """Attestations that may count now: by exact SHA-256 and/or by (peer, id), unrevoked, unexpired, from a
        peer that is configured and not distrusted. One query; trust and weight come with each row."""
        id_list = list(ids)
        hot = self._hot_path() if sha256 is not None and not id_list else None
        rows: Iterable[Mapping[str, Any]]
        if hot is not None:  # the one query every never-seen upload makes: one thread hop
            rows = await hot.rows(_USABLE_BY_SHA, {"sha256": sha256, "now": int(time.time())})
        else:
            conditions = []
            if sha256 is not None:
                conditions.append(attestations.c.sha256 == sha256)
            if id_list:
                conditions.append(tuple_(attestations.c.peer, attestations.c.att_id).in_(id_list))
            if not conditions:
                return []
            async with self.engine.connect() as conn:
                rows = (await conn.execute(_usable_query(conditions, int(time.time())))).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            trust = item.pop("trust_override")
            trust = trust if trust is not None else item["trust"]
            item["trust"] = frozenset(t for t in trust.split(",") if t)
            item["signals"] = json.loads(item["signals"])
            item["packs"] = json.loads(item["packs"])
            out.append(item)
        return out

    async def block_pdqs(self) -> list[tuple[str, str, str]]:
        """(peer, id, pdq) of every unrevoked, unexpired block attestation with a PDQ hash."""
        query = select(attestations.c.peer, attestations.c.att_id, attestations.c.pdq).where(and_(
            attestations.c.verdict == "block", attestations.c.pdq != "", attestations.c.revoked.is_(False),
            attestations.c.exp > int(time.time())))
        async with self.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(query)).all()]

    async def attestation_count(self, peer: str | None = None) -> int:
        query = select(func.count()).select_from(attestations)
        if peer is not None:
            query = query.where(attestations.c.peer == peer)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    # -- reliance --------------------------------------------------------------------------------------

    async def record_reliance(self, bucket: str, key: str, sha256: str, action: str, rule: str,
                              sources: list[dict[str, Any]]) -> None:
        """Written before the object lands. Durable against a crash of this process at once; against a power
        loss with the next fully synced commit (SQLite WAL `synchronous=NORMAL`, PostgreSQL
        `synchronous_commit=off` for this one transaction): an fsync per upload would cost more than the
        whole federated decision."""
        names = sorted({s["peer"] for s in sources})
        row = {"decided_at": now_text(), "bucket": bucket, "key": key, "sha256": sha256, "action": action,
               "rule": rule, "peers": "," + ",".join(names) + ",", "sources": json.dumps(sources, sort_keys=True),
               "rechecked_at": ""}
        hot = self._hot_path()
        if hot is not None:  # committed (WAL, synchronous=NORMAL) in one thread hop
            await hot.write(_RELIANCE_INSERT, row)
            return
        async with self.relaxed() as conn:
            await conn.execute(reliance.insert().values(**row))

    @contextlib.asynccontextmanager
    async def relaxed(self) -> AsyncIterator[AsyncConnection]:
        """A transaction committed without waiting for the disk (atomic, durable against a crash of this process;
        against power loss only once a later commit syncs). On SQLite, through a second engine on the same file
        whose connections are set up so (WAL, synchronous=NORMAL, a larger page cache): no per-write PRAGMAs."""
        if self.engine.dialect.name != "sqlite":
            async with self.engine.begin() as conn:
                await conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                yield conn
            return
        if self._relaxed is None:
            self._relaxed = create_async_engine(self.engine.url, connect_args={"timeout": 30.0})
            event.listen(self._relaxed.sync_engine, "connect", _relaxed_pragmas)
        async with self._relaxed.begin() as conn:
            yield conn

    async def close(self) -> None:
        if self._hot is not None:
            hot, self._hot = self._hot, None
            await asyncio.to_thread(hot.close)
        if self._relaxed is not None:
            await self._relaxed.dispose()
            self._relaxed = None

    async def relied_on(self, peer: str, bucket: str | None = None, *, pending_only: bool = True
                        ) -> list[dict[str, Any]]:
        """Decisions that relied on `peer` (optionally in one bucket), not yet re-checked."""
        condition = reliance.c.peers.like(f"%,{peer},%")
        if bucket is not None:
            condition = and_(condition, reliance.c.bucket == bucket)
        if pending_only:
            condition = and_(condition, reliance.c.rechecked_at == "")
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(reliance).where(condition).order_by(reliance.c.id))).mappings().all()
        return [dict(r) | {"sources": json.loads(r["sources"])} for r in rows]

    async def reliance_for(self, sha256s: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        wanted = sorted(set(sha256s))
        if not wanted:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(reliance).where(reliance.c.sha256.in_(wanted))
                                       .order_by(reliance.c.id))).mappings().all()
        out: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            out.setdefault(row["sha256"], []).append(dict(row) | {"sources": json.loads(row["sources"])})
        return out

    async def recent_reliance(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(reliance).order_by(reliance.c.id.desc()).limit(limit)
                                       .offset(offset))).mappings().all()
        return [dict(r) | {"sources": json.loads(r["sources"])} for r in rows]

    async def mark_rechecked(self, peer: str, bucket: str, keys: Iterable[str]) -> int:
        done = 0
        async with self.engine.begin() as conn:
            for key in keys:
                result = await conn.execute(update(reliance).where(and_(
                    reliance.c.peers.like(f"%,{peer},%"), reliance.c.bucket == bucket, reliance.c.key == key,
                    reliance.c.rechecked_at == "")).values(rechecked_at=now_text()))
                done += result.rowcount
        return done
