"""Verifying one page of a peer's feed and storing what holds, counting what does not.

Each entry is checked in order: a JWS with a `kid` this peer owns (its current key, or a key it rotated away
from, for entries issued before the rotation), a signature that verifies, a payload that parses, not expired
and not from the future. A rotation entry must be signed by the current key and makes the new key current
for the entries after it. Rejects are counted per peer and reason and logged; nothing a peer sends can raise
out of here except a database failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, update
from sqlalchemy.dialects import postgresql, sqlite

from proxy.federation.entries import Attestation, EntryError, Revocation, Rotation, parse_entry
from proxy.federation.keys import (
    BadSignature,
    KeyFileError,
    PublicKey,
    page_digest,
    token_kid,
    unverified_payload,
    verify,
)
from proxy.federation.store import FederationStore, PeerRow, attestations, peers
from proxy.state import now_text

log = logging.getLogger("bucketguard.federation")

#: Reasons an entry is refused (the counters `federation status` shows).
REASONS = ("bad-signature", "unknown-key", "rotated-key", "malformed", "expired", "future", "over-quota")
#: Clock difference tolerated on `iat`.
SKEW_S = 300


@dataclass
class Checked:
    entries: list[tuple[Any, str]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    last_seq: int = 0
    key: str = ""
    kid: str = ""
    retired: dict[str, dict[str, Any]] = field(default_factory=dict)
    rotated: bool = False


def page_signed_by(key: PublicKey, items: list[Any], signature: Any, after: int) -> bool:
    """Whether `signature` is the peer's current key's signature over exactly this page."""
    if not isinstance(signature, str):
        return False
    try:
        if token_kid(signature) != key.kid:
            return False
        claims = verify(signature, key)
        return (claims.get("t") == "page" and claims.get("after") == after
                and claims.get("digest") == page_digest(items))
    except (BadSignature, KeyError, TypeError):
        return False


def check_page(peer: PeerRow, items: list[Any], now: float, *, signature: Any = None, after: int = 0) -> Checked:
    """Pure and CPU-bound (runs in a worker thread): which entries of a page verify under the peer's keys.

    When the page's own signature verifies under the peer's current key, entries signed by that same key are
    taken on it (one signature check per page instead of one per entry; each is verified again alone before it
    counts in a decision, see proxy.federation.step); otherwise every entry is verified alone.
    """
    out = Checked(last_seq=peer.cursor, key=peer.key, kid=peer.kid, retired=dict(peer.retired))
    current = PublicKey.parse(peer.key)
    vouched = current.kid if page_signed_by(current, items, signature, after) else None
    keys: dict[str, tuple[PublicKey, int | None]] = {peer.kid: (current, None)}
    for kid, info in peer.retired.items():
        keys[kid] = (PublicKey.parse(info["key"]), int(info["until"]))
    for item in items:
        if (not isinstance(item, dict) or isinstance(item.get("seq"), bool) or not isinstance(item.get("seq"), int)
                or not isinstance(item.get("jws"), str)):
            out.rejected["malformed"] += 1
            continue
        if item["seq"] <= out.last_seq:
            continue  # already seen (a replayed or overlapping page)
        out.last_seq = item["seq"]
        token = item["jws"]
        try:
            kid = token_kid(token)
        except BadSignature:
            out.rejected["bad-signature"] += 1
            continue
        if kid not in keys:
            out.rejected["unknown-key"] += 1
            continue
        key, until = keys[kid]
        try:
            entry = parse_entry(unverified_payload(token) if kid == vouched else verify(token, key))
        except BadSignature:
            out.rejected["bad-signature"] += 1
            continue
        except EntryError:
            out.rejected["malformed"] += 1
            continue
        if until is not None and entry.iat > until:
            out.rejected["rotated-key"] += 1
            continue
        if entry.iat > now + SKEW_S:
            out.rejected["future"] += 1
            continue
        if isinstance(entry, Rotation):
            if kid != out.kid:
                out.rejected["rotated-key"] += 1
                continue
            try:
                new = PublicKey.parse(entry.new_key)
            except KeyFileError:
                out.rejected["malformed"] += 1
                continue
            keys[kid] = (key, entry.iat)
            keys[new.kid] = (new, None)
            out.retired[kid] = {"key": key.line, "until": entry.iat}
            out.key, out.kid, out.rotated = new.line, new.kid, True
            continue
        if isinstance(entry, Attestation) and entry.exp <= now:
            out.rejected["expired"] += 1
            continue
        out.entries.append((entry, token))
    return out


def _insert(dialect: str):
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(attestations)


_COLUMNS = ("peer", "att_id", "sha256", "pdq", "verdict", "basis", "category", "signals", "packs", "iat", "exp",
            "revoked", "token", "received_at")
_SQLITE_INSERT = ("INSERT OR IGNORE INTO federation_attestations (peer, att_id, sha256, pdq, verdict, basis, "
                  "category, signals, packs, iat, exp, revoked, token, received_at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


async def _insert_rows(conn: Any, dialect: str, rows: list[dict[str, Any]]) -> int:
    """Insert a page's attestations, skipping ones stored before; returns how many are new.

    On SQLite this is one driver-level executemany of INSERT OR IGNORE (a page of 1,000 rows through the
    ORM-free core path still costs several times more, and ingest speed is what bounds a first pull).
    On PostgreSQL the new rows are counted by what the insert returns: asyncpg's executemany gives no row count,
    and a count of 0 there left the peer's stored total, and so its quota, unchanged by every page."""
    if dialect == "sqlite":
        result = await conn.exec_driver_sql(_SQLITE_INSERT, [tuple(row[c] for c in _COLUMNS) for row in rows])
        return max(result.rowcount, 0)
    statement = _insert(dialect).on_conflict_do_nothing(index_elements=["peer", "att_id"])
    return len((await conn.execute(statement.returning(attestations.c.att_id), rows)).all())


class Ingester:
    def __init__(self, store: FederationStore, *, max_per_peer: int) -> None:
        self.store = store
        self.max_per_peer = max_per_peer

    async def ingest(self, peer: PeerRow, items: list[Any], *, signature: Any = None, after: int = 0) -> Checked:
        """Verify and store one page for `peer`; returns what was checked (accepted entries and rejects)."""
        checked = await self.check(peer, items, signature=signature, after=after)
        await self.store_checked(peer, checked)
        return checked

    async def ingest_pages(self, peer: PeerRow, pages: AsyncIterator[tuple[list[Any], Any, int]]) -> int:
        """(entries, page signature, after) in feed order; each page is verified while the one before it is
        written (a worker thread each). Returns the entries accepted."""
        accepted = 0
        writing: asyncio.Task[int] | None = None
        state = peer
        try:
            async for items, signature, after in pages:
                checked = await self.check(state, items, signature=signature, after=after)
                if writing is not None:
                    await writing
                writing = asyncio.create_task(self.store_checked(state, checked))
                accepted += len(checked.entries)
                state = dataclasses.replace(state, cursor=checked.last_seq, key=checked.key, kid=checked.kid,
                                            retired=checked.retired, stored=state.stored + len(checked.entries))
        finally:
            if writing is not None:
                await writing
        return accepted

    async def check(self, peer: PeerRow, items: list[Any], *, signature: Any = None, after: int = 0) -> Checked:
        return await asyncio.to_thread(check_page, peer, items, time.time(), signature=signature, after=after)

    async def store_checked(self, peer: PeerRow, checked: Checked) -> int:
        """Write a checked page: its attestations, revocations, the peer's cursor and keys, the counts."""
        received = now_text()
        rows: list[dict[str, Any]] = []
        revocations: list[tuple[Revocation, str]] = []
        room = max(0, self.max_per_peer - peer.stored)
        for entry, token in checked.entries:
            if isinstance(entry, Revocation):
                revocations.append((entry, token))
            elif len(rows) >= room:
                checked.rejected["over-quota"] += 1
            else:
                rows.append({"peer": peer.name, "att_id": entry.id, "sha256": entry.sha256, "pdq": entry.pdq,
                             "verdict": entry.verdict, "basis": entry.basis, "category": entry.category,
                             "signals": json.dumps(entry.signals), "packs": json.dumps(entry.packs, sort_keys=True),
                             "iat": entry.iat, "exp": entry.exp, "revoked": False, "token": token,
                             "received_at": received})
        engine = self.store.engine
        # Rows and cursor commit together, so a page lost to a power cut is simply pulled again: no fsync needed.
        async with self.store.relaxed() as conn:
            inserted = 0
            if rows:
                inserted = await _insert_rows(conn, engine.dialect.name, rows)
            for revocation, token in revocations:
                await conn.execute(_insert(engine.dialect.name).values(
                    peer=peer.name, att_id=revocation.revokes, sha256="", pdq="", verdict="revoked", basis="review",
                    category="", signals="{}", packs="{}", iat=revocation.iat, exp=2**40, revoked=True, token=token,
                    received_at=received).on_conflict_do_nothing(index_elements=["peer", "att_id"]))
                revoked = and_(attestations.c.peer == peer.name, attestations.c.att_id == revocation.revokes)
                await conn.execute(update(attestations).where(revoked).values(revoked=True))
            values: dict[str, Any] = {"cursor": checked.last_seq, "stored": peers.c.stored + inserted,
                                      "failures": 0, "last_error": "", "last_pull_at": received}
            if checked.rotated:
                values.update(key=checked.key, kid=checked.kid, retired=json.dumps(checked.retired, sort_keys=True))
            await conn.execute(update(peers).where(peers.c.name == peer.name).values(**values))
            accepted = Counter({"accepted": inserted, "revoked": len(revocations), "rotated": int(checked.rotated)})
            await self.store.add_counts(conn, peer.name, +accepted + checked.rejected)
        if checked.rejected:
            log.warning("federation: peer %s: refused entries %s", peer.name, dict(checked.rejected))
        if checked.rotated:
            log.info("federation: peer %s rotated its key to %s", peer.name, checked.kid)
        return inserted
