"""The evidence log: an append-only, hash-chained record of every catch and every operator action.

Each record carries ``prev_hash`` (the ``record_hash`` of the record before it; 64 zeros for the first)
and ``record_hash`` = SHA-256 (hex) over the record's *canonical form*:

* a JSON object holding every field of :data:`HASHED_FIELDS` (``prev_hash`` included, ``record_hash``
  excluded), with ``signals``, ``pack_versions`` and ``detail`` as JSON objects, not strings;
* keys sorted, no whitespace (separators ``,`` and ``:``), non-ASCII characters written as themselves
  and the whole encoded as UTF-8; floats as Python's ``repr`` (the shortest text that reads back to the
  same double), NaN and infinities refused.

So anyone can recompute a hash with ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()``. Appends are serialised across processes and replicas: the transaction
that reads the chain head and inserts takes the database's write lock first (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``pg_advisory_xact_lock``), so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Integer, String, Table, Text, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.state import Migration, metadata, widen_to_bigint

GENESIS_HASH = "0" * 64

#: Event types: what the proxy decided, and what an operator (or the proxy on their behalf) did.
DECISION_EVENTS = frozenset({"quarantine", "reject", "flag"})
#: What the proxy learnt after a decision: the let-through write of a flagged upload failed upstream.
OUTCOME_EVENTS = frozenset({"write-failed"})
OPERATOR_EVENTS = frozenset({"reported", "hold", "unhold", "purge", "release", "confirm", "reveal", "export",
                             "pictrs-purge"})  # pictrs-purge: proxy/integrations/pictrs.py
EVENT_TYPES = DECISION_EVENTS | OUTCOME_EVENTS | OPERATOR_EVENTS

#: Fields covered by record_hash, in the order they are documented (the canonical form sorts them).
HASHED_FIELDS: tuple[str, ...] = (
    "seq", "time", "event", "item_id", "access_key", "bucket", "key", "size", "content_type",
    "sha256", "md5", "pdq", "signals", "rule", "category", "action", "pack_versions",
    "policy_version", "actor", "detail", "prev_hash",
)
_JSON_FIELDS = ("signals", "pack_versions", "detail")

#: Advisory-lock key of the chain on PostgreSQL (any constant; "bgev" in ASCII).
_PG_LOCK_KEY = 0x62676576

evidence_records = Table(
    "evidence_records",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("time", String(40), nullable=False),
    Column("event", String(16), nullable=False),
    Column("item_id", String(64), nullable=False, index=True),
    Column("access_key", String(256), nullable=False),
    Column("bucket", String(256), nullable=False),
    Column("key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(256), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("md5", String(32), nullable=False),
    Column("pdq", String(64), nullable=False),
    Column("signals", Text, nullable=False),
    Column("rule", String(256), nullable=False),
    Column("category", String(256), nullable=False),
    Column("action", String(16), nullable=False),
    Column("pack_versions", Text, nullable=False),
    Column("policy_version", String(256), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("record_hash", String(64), nullable=False, unique=True),
)

#: The head of the chain (one row, id 1): lets verify notice records cut from the end.
evidence_head = Table(
    "evidence_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("record_hash", String(64), nullable=False),
)


def _create_tables(connection: Connection) -> None:
    evidence_records.create(connection)
    evidence_head.create(connection)


MIGRATIONS: list[Migration] = [
    Migration("evidence-0001-records", _create_tables),
    # objects over 2 GiB: PostgreSQL's INTEGER is 32-bit
    Migration("evidence-0002-size-bigint", widen_to_bigint("evidence_records", "size")),
]


class EvidenceError(ValueError):
    """An evidence event that cannot be recorded as given."""


@dataclass(frozen=True)
class Event:
    """What one evidence record says, before it gets its place in the chain."""

    event: str
    item_id: str
    actor: str
    access_key: str = ""
    bucket: str = ""
    key: str = ""
    size: int = 0
    content_type: str = ""
    sha256: str = ""
    md5: str = ""
    pdq: str = ""
    signals: Mapping[str, Any] = field(default_factory=dict)
    rule: str = ""
    category: str = ""
    action: str = ""
    pack_versions: Mapping[str, str] = field(default_factory=dict)
    policy_version: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


def canonical_json(value: Any) -> str:
    """The one JSON text form used in hashes: sorted keys, no whitespace, floats as repr, no NaN."""
    _refuse_non_finite(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse_non_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise EvidenceError(f"evidence cannot hold the non-finite number {value!r}")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_non_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_non_finite(item)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical form of a record (a row of evidence_records or an exported dict)."""
    body = {name: record[name] for name in HASHED_FIELDS}
    for name in _JSON_FIELDS:
        if isinstance(body[name], str):
            body[name] = json.loads(body[name])
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def record_to_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record as a plain dict with the JSON fields decoded (for export and display)."""
    record = {name: row[name] for name in (*HASHED_FIELDS, "record_hash")}
    for name in _JSON_FIELDS:
        record[name] = json.loads(record[name])
    return record


def utc_timestamp(moment: datetime | None = None) -> str:
    """The record's time as text: ISO 8601 in UTC with microseconds, so it reads back exactly."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@asynccontextmanager
async def chain_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction holding the chain's write lock from its first statement to its commit.

    Everything that must land together with an evidence record (an item row, a status change) runs in
    this transaction, so a crash leaves either both or neither.
    """
    async with engine.connect() as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            # pysqlite starts transactions lazily; taking the RESERVED lock at BEGIN (not at the first
            # write) means two writers never both read the same head.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
        else:
            raise EvidenceError(f"no chain lock for database dialect {dialect!r}")
        try:
            yield conn
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()


async def append(conn: AsyncConnection, event: Event, *, now: datetime | None = None) -> dict[str, Any]:
    """Append one record inside a :func:`chain_transaction`; returns the stored record."""
    if event.event not in EVENT_TYPES:
        raise EvidenceError(f"unknown evidence event type {event.event!r}")
    if not event.actor:
        raise EvidenceError("an evidence record needs an actor")
    head = (await conn.execute(select(evidence_head.c.seq, evidence_head.c.record_hash))).first()
    seq, prev_hash = (head.seq + 1, head.record_hash) if head else (1, GENESIS_HASH)
    row: dict[str, Any] = {
        "seq": seq,
        "time": utc_timestamp(now),
        "event": event.event,
        "item_id": event.item_id,
        "access_key": event.access_key,
        "bucket": event.bucket,
        "key": event.key,
        "size": int(event.size),
        "content_type": event.content_type,
        "sha256": event.sha256,
        "md5": event.md5,
        "pdq": event.pdq,
        "signals": canonical_json(dict(event.signals)),
        "rule": event.rule,
        "category": event.category,
        "action": event.action,
        "pack_versions": canonical_json(dict(event.pack_versions)),
        "policy_version": event.policy_version,
        "actor": event.actor,
        "detail": canonical_json(dict(event.detail)),
        "prev_hash": prev_hash,
    }
    row["record_hash"] = record_hash(row)
    await conn.execute(evidence_records.insert().values(**row))
    if head:
        await conn.execute(evidence_head.update().where(evidence_head.c.id == 1)
                           .values(seq=seq, record_hash=row["record_hash"]))
    else:
        await conn.execute(evidence_head.insert().values(id=1, seq=seq, record_hash=row["record_hash"]))
    return record_to_dict(row)


async def append_one(engine: AsyncEngine, event: Event) -> dict[str, Any]:
    """Append a single record in its own locked transaction."""
    async with chain_transaction(engine) as conn:
        return await append(conn, event)


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of walking the chain: ``ok`` with a count, or the first broken record and why."""

    count: int
    broken_seq: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


_VERIFY_BATCH = 500


async def verify(engine: AsyncEngine) -> VerifyResult:
    """Walk the whole chain in order, recomputing each hash; stop at the first broken record."""
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    async with engine.connect() as conn:
        while True:
            rows = (await conn.execute(
                select(evidence_records).where(evidence_records.c.seq >= expected_seq)
                .order_by(evidence_records.c.seq).limit(_VERIFY_BATCH))).mappings().all()
            for row in rows:
                if row["seq"] != expected_seq:
                    missing = (f"record {expected_seq} is missing" if row["seq"] == expected_seq + 1
                               else f"records {expected_seq} to {row['seq'] - 1} are missing")
                    return VerifyResult(count, expected_seq, f"missing sequence: {missing}")
                try:
                    recomputed = record_hash(row)
                except (ValueError, TypeError) as exc:
                    return VerifyResult(count, row["seq"],
                                        f"content changed: a field no longer parses ({exc})")
                if recomputed != row["record_hash"]:
                    return VerifyResult(count, row["seq"],
                                        "content changed: its hash does not match its fields")
                if row["prev_hash"] != prev_hash:
                    return VerifyResult(count, row["seq"],
                                        "prev_hash mismatch: it does not link to the record before it")
                expected_seq, prev_hash, count = expected_seq + 1, row["record_hash"], count + 1
            if len(rows) < _VERIFY_BATCH:
                break
        head = (await conn.execute(select(evidence_head.c.seq, evidence_head.c.record_hash))).first()
    head_seq, head_hash = (head.seq, head.record_hash) if head else (0, GENESIS_HASH)
    if head_seq > count:
        missing = (f"record {count + 1} is missing" if head_seq == count + 1
                   else f"records {count + 1} to {head_seq} are missing")
        return VerifyResult(count, count + 1, f"missing sequence: {missing} (the chain head is {head_seq})")
    if head_seq != count or head_hash != prev_hash:
        return VerifyResult(count, head_seq or None,
                            "head mismatch: the recorded chain head does not match the last record")
    return VerifyResult(count)


async def records_for_item(engine: AsyncEngine, item_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(evidence_records).where(evidence_records.c.item_id == item_id)
                                   .order_by(evidence_records.c.seq))).mappings().all()
    return [record_to_dict(row) for row in rows]


async def chain_proof(engine: AsyncEngine, seq: int) -> dict[str, Any]:
    """The record at ``seq`` with every later record up to the head, and the head hash.

    A reader checks it with :func:`verify_proof`: each record's hash recomputes from its fields and
    each later record's ``prev_hash`` is the hash before it, ending at ``head_hash``. (Later records are
    given whole because a record's hash covers all of its fields.)
    """
    async with engine.connect() as conn:
        rows = (await conn.execute(select(evidence_records).where(evidence_records.c.seq >= seq)
                                   .order_by(evidence_records.c.seq))).mappings().all()
        head = (await conn.execute(select(evidence_head.c.seq, evidence_head.c.record_hash))).first()
    if not rows or rows[0]["seq"] != seq or head is None:
        raise EvidenceError(f"no evidence record {seq}")
    records = [record_to_dict(row) for row in rows]
    return {
        "format": "bucketguard-chain-proof/1",
        "hash": "sha256 over canonical JSON (sorted keys, no whitespace, UTF-8, floats as repr)",
        "record": records[0],
        "following": records[1:],
        "head_seq": head.seq,
        "head_hash": head.record_hash,
    }


def verify_proof(proof: Mapping[str, Any]) -> str:
    """Check a chain proof; returns "" when it holds, else what is wrong."""
    chain = [proof["record"], *proof["following"]]
    prev = chain[0]["prev_hash"]
    for record in chain:
        if record["prev_hash"] != prev:
            return f"record {record['seq']}: prev_hash mismatch"
        if record_hash(record) != record["record_hash"]:
            return f"record {record['seq']}: content changed"
        prev = record["record_hash"]
    if chain[-1]["seq"] != proof["head_seq"] or prev != proof["head_hash"]:
        return "the chain does not end at the head"
    return ""
