"""This instance's side: turning its own decisions into signed entries in its feed (the outbox).

What is published is the operator's choice (`[federation] publish`, nothing by default): `clean` (the
detectors scanned the bytes and the policy allowed them), `hashlist` (an exact or PDQ match in one of the
operator's block lists), `confirmed` (a quarantine item a reviewer confirmed). An attestation carries hashes,
signals, packs, the verdict and how it was reached; never the bytes, the key, the bucket or the uploader.
A confirmed block revokes this instance's own earlier `clean` for the same bytes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from sqlalchemy import and_, select, update

from proxy.federation.entries import Attestation, Revocation, Rotation, new_id
from proxy.federation.keys import SigningKey
from proxy.federation.store import FederationStore, outbox
from proxy.screening.facts import MAX_DETECTOR_BYTES
from proxy.state import now_text


class Publisher:
    def __init__(self, store: FederationStore, key_file: str, *, name: str, kinds: tuple[str, ...],
                 ttl_days: float) -> None:
        self.store = store
        self.key_file = key_file
        self.name = name
        self.kinds = frozenset(kinds)
        self.ttl_s = int(ttl_days * 86400)
        self._key = SigningKey.load(key_file)
        self._mtime = os.stat(key_file).st_mtime_ns
        #: The quarantine's byte store, to hash a confirmed item that was caught before its PDQ was computed.
        self.quarantine_store: Any = None

    @property
    def key(self) -> SigningKey:
        """The current key; a key file replaced by `keygen --rotate` is picked up without a restart."""
        mtime = os.stat(self.key_file).st_mtime_ns
        if mtime != self._mtime:
            self._key, self._mtime = SigningKey.load(self.key_file), mtime
        return self._key

    async def append(self, payload: dict[str, Any], *, key: SigningKey | None = None, sha256: str = "",
                     verdict: str = "", source: str = "", exp: int = 0) -> int:
        token = (key or self.key).sign(payload)
        async with self.store.engine.begin() as conn:
            result = await conn.execute(outbox.insert().values(
                entry_id=payload["id"], kind=payload["t"], sha256=sha256, verdict=verdict, source=source, exp=exp,
                revoked=False, token=token, created_at=now_text()))
        return int(result.inserted_primary_key[0])

    async def attest(self, sha256: str, pdq: str, verdict: str, basis: str, *, category: str = "",
                     signals: dict[str, float] | None = None, packs: dict[str, str] | None = None,
                     source: str = "", ttl_s: int | None = None) -> str | None:
        """Publish one attestation unless a live one with the same verdict exists; returns its id."""
        now = int(time.time())
        async with self.store.engine.connect() as conn:
            live = (await conn.execute(select(outbox.c.entry_id).where(and_(
                outbox.c.sha256 == sha256, outbox.c.verdict == verdict, outbox.c.revoked.is_(False),
                outbox.c.exp > now)).limit(1))).first()
        if live is not None:
            return None
        exp = now + (self.ttl_s if ttl_s is None else ttl_s)
        attestation = Attestation(new_id(), self.name, sha256, pdq, verdict, basis, category,
                                  {k: float(v) for k, v in (signals or {}).items()}, dict(packs or {}), now, exp)
        await self.append(attestation.payload(), sha256=sha256, verdict=verdict, source=source, exp=exp)
        return attestation.id

    async def on_decided(self, decision: Any) -> None:
        """Called after the pipeline acted on an upload: publish what the operator chose to publish."""
        if decision.pending or not decision.sha256:
            return
        if ("clean" in self.kinds and decision.step == "detectors" and decision.action == "allow" and decision.signals
                and decision.rule not in ("on_undecodable", "on_non_media", "on_unavailable")):
            await self.attest(decision.sha256, decision.pdq, "clean", "detectors", signals=decision.signals,
                              packs=decision.packs)
        elif ("hashlist" in self.kinds and decision.step == "blocklist"
              and decision.action in ("quarantine", "reject")):
            await self.attest(decision.sha256, decision.pdq, "block", "hashlist", category=decision.category)

    async def sync_confirmed(self) -> int:
        """Publish blocks for quarantine items confirmed by a reviewer since the last call; returns how many."""
        if "confirmed" not in self.kinds:
            return 0
        import json

        from proxy.evidence.quarantine import quarantine_items

        published = select(outbox.c.source).where(outbox.c.source != "")
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(select(quarantine_items).where(and_(
                quarantine_items.c.status == "confirmed", quarantine_items.c.id.not_in(published))))).mappings().all()
        for row in rows:
            await self.revoke_sha256(row["sha256"], "clean", reason="confirmed block after review")
            await self.attest(row["sha256"], row["pdq"] or await self._pdq(row), "block", "review",
                              category=row["category"],
                              signals=json.loads(row["signals"]), packs=json.loads(row["pack_versions"]),
                              source=row["id"])
        return len(rows)

    async def _pdq(self, item: Any) -> str:
        """PDQ of a kept still image (an exact hash-list match is caught before any decode), or ""."""
        if (self.quarantine_store is None or not item["bytes_kept"] or item["size"] > MAX_DETECTOR_BYTES
                or not str(item["content_type"]).startswith("image/")):
            return ""
        from proxy.screening.hashing import pdq_hash

        data = b"".join([chunk async for chunk in self.quarantine_store.open(item["id"])])
        pdq = await asyncio.to_thread(pdq_hash, data)
        return pdq.hash_hex if pdq is not None else ""

    async def revoke(self, entry_id: str, reason: str = "") -> bool:
        async with self.store.engine.begin() as conn:
            result = await conn.execute(update(outbox).where(and_(
                outbox.c.entry_id == entry_id, outbox.c.kind == "attestation", outbox.c.revoked.is_(False)))
                .values(revoked=True))
        if result.rowcount != 1:
            return False
        await self.append(Revocation(new_id(), entry_id, int(time.time()), reason).payload())
        return True

    async def revoke_sha256(self, sha256: str, verdict: str, *, reason: str) -> int:
        async with self.store.engine.connect() as conn:
            ids = list((await conn.execute(select(outbox.c.entry_id).where(and_(
                outbox.c.sha256 == sha256, outbox.c.verdict == verdict, outbox.c.revoked.is_(False))))).scalars())
        return sum([await self.revoke(entry_id, reason) for entry_id in ids])

    async def rotate(self, old: SigningKey, new: SigningKey) -> None:
        """The rotation entry, signed by the old key, naming the new one (the CLI swaps the key files)."""
        await self.append(Rotation(new_id(), new.public.line, int(time.time())).payload(), key=old)

    async def page(self, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(select(outbox.c.seq, outbox.c.token).where(outbox.c.seq > after)
                                       .order_by(outbox.c.seq).limit(limit + 1))).all()
        return [{"seq": int(seq), "jws": token} for seq, token in rows[:limit]], len(rows) > limit

    async def preview(self, limit: int = 20) -> list[dict[str, Any]]:
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(select(outbox).order_by(outbox.c.seq.desc()).limit(limit))).mappings().all()
        return [dict(r) for r in rows]
