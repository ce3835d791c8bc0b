"""The quarantine: items caught by screening, their bytes in the store, and the operator's actions on them.

Every change to an item and its evidence record are written in one chain transaction (see
:mod:`proxy.evidence.log`), so the items table and the evidence log always agree. Bytes are kept only for
``quarantine``; ``reject`` keeps the record and hashes, ``flag`` (the object landed) only the record.

Retention: bytes of an item are kept ``retention_days`` from the date the operator reported it (when a
report was recorded), else from detection; a legal hold blocks any purge.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Connection, String, Table, Text, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.evidence import log as evidence
from proxy.evidence.log import Event, canonical_json, chain_transaction, utc_timestamp
from proxy.evidence.store import Body, QuarantineStore, StoreError
from proxy.state import Migration, metadata, widen_to_bigint

#: What the screen decided -> the item's first status.
_STATUS_OF_ACTION = {"quarantine": "quarantined", "reject": "rejected", "flag": "flagged"}
#: not-landed: a flag whose upstream write then failed (the object never reached the bucket)
STATUSES = ("quarantined", "rejected", "flagged", "released", "confirmed", "purged", "not-landed")

quarantine_items = Table(
    "quarantine_items",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", String(40), nullable=False),
    Column("sha256", String(64), nullable=False, index=True),
    Column("md5", String(32), nullable=False),
    Column("pdq", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(256), nullable=False),
    Column("bucket", String(256), nullable=False),
    Column("key", Text, nullable=False),
    Column("access_key", String(256), nullable=False),
    Column("action", String(16), nullable=False),
    Column("rule", String(256), nullable=False),
    Column("category", String(256), nullable=False),
    Column("signals", Text, nullable=False),
    Column("pack_versions", Text, nullable=False),
    Column("policy_version", String(256), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("bytes_kept", Boolean, nullable=False),
    Column("reported_at", String(40), nullable=True),
    Column("report_ref", Text, nullable=True),
    Column("legal_hold", Boolean, nullable=False, default=False),
    Column("hold_reason", Text, nullable=True),
    Column("reviewed_by", String(256), nullable=True),
    Column("reviewed_at", String(40), nullable=True),
    Column("purged_at", String(40), nullable=True),
)


def _create_tables(connection: Connection) -> None:
    quarantine_items.create(connection)


MIGRATIONS: list[Migration] = [
    Migration("quarantine-0001-items", _create_tables),
    # objects over 2 GiB: PostgreSQL's INTEGER is 32-bit
    Migration("quarantine-0002-size-bigint", widen_to_bigint("quarantine_items", "size")),
]


class QuarantineError(RuntimeError):
    """An operator request the quarantine refuses; the message is one line meant for the operator."""


@dataclass(frozen=True)
class Catch:
    """The facts of one screened upload that the screen stopped or flagged."""

    action: str
    bucket: str
    key: str
    access_key: str
    content_type: str
    size: int
    sha256: str
    md5: str
    pdq: str = ""
    signals: Mapping[str, Any] = field(default_factory=dict)
    rule: str = ""
    category: str = ""
    pack_versions: Mapping[str, str] = field(default_factory=dict)
    policy_version: str = ""


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def item_to_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    item = dict(row)
    item["signals"] = json.loads(item["signals"])
    item["pack_versions"] = json.loads(item["pack_versions"])
    item["legal_hold"] = bool(item["legal_hold"])
    item["bytes_kept"] = bool(item["bytes_kept"])
    return item


class Quarantine:
    """The items table, the store and the evidence log, used together."""

    def __init__(self, engine: AsyncEngine, store: QuarantineStore, *, retention_days: int = 365) -> None:
        self.engine = engine
        self.store = store
        self.retention = timedelta(days=retention_days)

    # -- the screen's side -------------------------------------------------------------------------

    async def record(self, catch: Catch, *, body: Body | None = None, actor: str = "") -> str:
        """Record a quarantine, reject or flag; for ``quarantine`` keep ``body`` (bytes or a file).

        Order: bytes to the store (checked against the declared SHA-256 and MD5), then the item and its
        evidence record in one transaction; if that fails the bytes are deleted again. Returns the id.
        """
        status = _STATUS_OF_ACTION.get(catch.action)
        if status is None:
            raise QuarantineError(f"cannot record action {catch.action!r} (quarantine, reject or flag)")
        item_id = uuid.uuid4().hex
        keep = catch.action == "quarantine"
        if keep:
            if body is None:
                raise QuarantineError("a quarantine needs the upload's bytes")
            stored = await self.store.put(item_id, body, catch.size)
            if (stored.sha256, stored.md5) != (catch.sha256, catch.md5):
                await self.store.delete(item_id)
                raise StoreError(f"quarantine item {item_id}: bytes do not match the screened hashes")
        try:
            async with chain_transaction(self.engine) as conn:
                record = await evidence.append(conn, Event(
                    event=catch.action, item_id=item_id, actor=actor or catch.access_key,
                    access_key=catch.access_key, bucket=catch.bucket, key=catch.key, size=catch.size,
                    content_type=catch.content_type, sha256=catch.sha256, md5=catch.md5, pdq=catch.pdq,
                    signals=catch.signals, rule=catch.rule, category=catch.category, action=catch.action,
                    pack_versions=catch.pack_versions, policy_version=catch.policy_version,
                ))
                await conn.execute(quarantine_items.insert().values(
                    id=item_id, created_at=record["time"], sha256=catch.sha256, md5=catch.md5,
                    pdq=catch.pdq, size=catch.size, content_type=catch.content_type, bucket=catch.bucket,
                    key=catch.key, access_key=catch.access_key, action=catch.action, rule=catch.rule,
                    category=catch.category, signals=canonical_json(dict(catch.signals)),
                    pack_versions=canonical_json(dict(catch.pack_versions)),
                    policy_version=catch.policy_version, status=status, bytes_kept=keep, legal_hold=False,
                ))
        except BaseException:
            if keep:
                await self.store.delete(item_id)
            raise
        return item_id

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, item_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return item_to_dict(await self._row(conn, item_id))

    async def list(self, status: str | None = None) -> list[dict[str, Any]]:
        query = select(quarantine_items).order_by(quarantine_items.c.created_at, quarantine_items.c.id)
        if status is not None:
            query = query.where(quarantine_items.c.status == status)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [item_to_dict(row) for row in rows]

    def expires_at(self, item: Mapping[str, Any]) -> datetime:
        start = item["reported_at"] or item["created_at"]
        return parse_time(start) + self.retention

    async def read_bytes(self, item_id: str, *, actor: str, reason: str = "") -> AsyncIterator[bytes]:
        """Stream an item's bytes; the access is recorded first as a ``reveal``."""
        await self.record_event(item_id, "reveal", actor=actor, detail={"reason": reason} if reason else {})
        return self.store.open(item_id)

    # -- operator actions --------------------------------------------------------------------------

    async def record_event(self, item_id: str, event: str, *, actor: str,
                           detail: Mapping[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
        """Append an operator event for an item and apply ``changes`` to its row, in one transaction.

        For actions other modules own (release, confirm, reveal); returns the evidence record.
        """
        async with chain_transaction(self.engine) as conn:
            item = item_to_dict(await self._row(conn, item_id))
            return await self._apply(conn, item, event, actor=actor, detail=detail or {}, changes=changes)

    async def mark_reported(self, item_id: str, *, ref: str, actor: str,
                            now: datetime | None = None) -> dict[str, Any]:
        if not ref.strip():
            raise QuarantineError("a report needs a reference (--ref)")
        moment = utc_timestamp(now)
        return await self.record_event(item_id, "reported", actor=actor, detail={"ref": ref},
                                       reported_at=moment, report_ref=ref)

    async def hold(self, item_id: str, *, reason: str, actor: str) -> dict[str, Any]:
        if not reason.strip():
            raise QuarantineError("a legal hold needs a reason (--reason)")
        return await self.record_event(item_id, "hold", actor=actor, detail={"reason": reason},
                                       legal_hold=True, hold_reason=reason)

    async def unhold(self, item_id: str, *, actor: str) -> dict[str, Any]:
        async with chain_transaction(self.engine) as conn:
            item = item_to_dict(await self._row(conn, item_id))
            if not item["legal_hold"]:
                raise QuarantineError(f"item {item_id} is not on legal hold")
            return await self._apply(conn, item, "unhold", actor=actor, detail={},
                                     changes={"legal_hold": False, "hold_reason": None})

    async def purge(self, item_id: str, *, actor: str, force: bool = False,
                    now: datetime | None = None) -> dict[str, Any]:
        """Delete an item's bytes (record and hashes stay); before expiry only with ``force``."""
        now = now or datetime.now(UTC)
        async with chain_transaction(self.engine) as conn:
            item = item_to_dict(await self._row(conn, item_id))
            if item["legal_hold"]:
                raise QuarantineError(f"item {item_id} is on legal hold ({item['hold_reason']}); "
                                      "unhold it first")
            if not item["bytes_kept"]:
                raise QuarantineError(f"item {item_id} has no bytes to purge (status {item['status']})")
            expires = self.expires_at(item)
            if expires > now and not force:
                raise QuarantineError(f"item {item_id} is kept until {expires:%Y-%m-%d}; "
                                      "use --force to purge it before then")
            return await self._purge_locked(conn, item, actor=actor, now=now,
                                            forced=expires > now)

    async def expired(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Items whose bytes are past retention and not on hold: what ``purge --expired`` takes."""
        now = now or datetime.now(UTC)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(quarantine_items).where(
                quarantine_items.c.bytes_kept.is_(True), quarantine_items.c.legal_hold.is_(False),
            ).order_by(quarantine_items.c.created_at))).mappings().all()
        return [item for item in map(item_to_dict, rows) if self.expires_at(item) <= now]

    async def purge_expired(self, *, actor: str, now: datetime | None = None) -> list[dict[str, Any]]:
        """Purge every expired item not on hold; each purge is its own recorded transaction."""
        now = now or datetime.now(UTC)
        purged = []
        for candidate in await self.expired(now):
            async with chain_transaction(self.engine) as conn:
                item = item_to_dict(await self._row(conn, candidate["id"]))
                # Re-checked under the lock: a hold or a report may have come in meanwhile.
                if item["legal_hold"] or not item["bytes_kept"] or self.expires_at(item) > now:
                    continue
                await self._purge_locked(conn, item, actor=actor, now=now, forced=False)
            purged.append(item)
        return purged

    # -- internals ---------------------------------------------------------------------------------

    async def _row(self, conn: AsyncConnection, item_id: str) -> Mapping[str, Any]:
        row = (await conn.execute(select(quarantine_items)
                                  .where(quarantine_items.c.id == item_id))).mappings().first()
        if row is None:
            raise QuarantineError(f"no quarantine item {item_id[:80]!r}")
        return row

    async def _purge_locked(self, conn: AsyncConnection, item: dict[str, Any], *, actor: str,
                            now: datetime, forced: bool) -> dict[str, Any]:
        detail = {"forced": forced, "expires_at": utc_timestamp(self.expires_at(item))}
        record = await self._apply(conn, item, "purge", actor=actor, detail=detail, changes={
            "status": "purged", "bytes_kept": False, "purged_at": utc_timestamp(now)})
        # Deleted before the commit: if deletion fails, neither the status nor the record changes.
        await self.store.delete(item["id"])
        return record

    async def _apply(self, conn: AsyncConnection, item: dict[str, Any], event: str, *, actor: str,
                     detail: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        if "status" in changes and changes["status"] not in STATUSES:
            raise QuarantineError(f"unknown item status {changes['status']!r}")
        record = await evidence.append(conn, Event(
            event=event, item_id=item["id"], actor=actor, access_key=item["access_key"],
            bucket=item["bucket"], key=item["key"], size=item["size"], content_type=item["content_type"],
            sha256=item["sha256"], md5=item["md5"], pdq=item["pdq"], rule=item["rule"],
            category=item["category"], action=item["action"], policy_version=item["policy_version"],
            pack_versions=item["pack_versions"], detail=detail,
        ))
        if changes:
            await conn.execute(quarantine_items.update().where(quarantine_items.c.id == item["id"])
                               .values(**changes))
        return record
