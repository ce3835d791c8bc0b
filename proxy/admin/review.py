"""Review decisions shared by the CLI and the review page: release a false positive, confirm a real one.

A release spans evidence (the item), storage (the restore) and screening (the allow list), so it lives above
all three, beside the page that calls it.
"""

from __future__ import annotations

from typing import Any

from proxy.config import Config
from proxy.evidence.quarantine import Quarantine, QuarantineError
from proxy.screening.cache import VerdictCache
from proxy.storage.spool import SpooledBody
from proxy.storage.upstream import Upstream


async def release(quarantine: Quarantine, config: Config, db: Any, item_id: str, *, actor: str) -> dict[str, Any]:
    """Put a false positive back under its original key, byte-exact, and allow its exact SHA-256 from now on."""
    item = await quarantine.get(item_id)
    if item["status"] != "quarantined":
        raise QuarantineError(f"{item_id}: only quarantined items can be released (this one is {item['status']})")
    real_bucket = config.real_bucket(item["bucket"])
    if real_bucket is None:
        raise QuarantineError(f"{item_id}: bucket {item['bucket']!r} is no longer served by this config")
    body = SpooledBody(memory_limit=config.limits.memory_buffer_bytes, max_bytes=max(item["size"], 1),
                       spool_dir=config.limits.spool_dir or None)
    upstream = Upstream(config.upstream, config.limits)
    await upstream.start()
    try:
        async for chunk in quarantine.store.open(item_id):
            await body.write(chunk)
        if body.sha256 != item["sha256"]:
            raise QuarantineError(f"{item_id}: the stored bytes do not match the recorded SHA-256; not released")
        await upstream.put_object(real_bucket, item["key"], body, content_type=item["content_type"])
    finally:
        body.close()
        await upstream.close()
    await VerdictCache(db).allow(item["sha256"], reason=f"released item {item_id}", added_by=actor)
    return await quarantine.record_event(item_id, "release", actor=actor, status="released",
                                         detail={"restored_to": f"{item['bucket']}/{item['key']}",
                                                 "allow_listed_sha256": item["sha256"]})


async def confirm(quarantine: Quarantine, item_id: str, *, actor: str) -> dict[str, Any]:
    item = await quarantine.get(item_id)
    if item["status"] not in ("quarantined", "rejected", "flagged"):
        raise QuarantineError(f"{item_id}: cannot confirm an item that is {item['status']}")
    return await quarantine.record_event(item_id, "confirm", actor=actor, status="confirmed")
