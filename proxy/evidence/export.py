"""The evidence package of one item: a zip for a report to the authorities.

Contents: ``object.<ext>`` (the bytes, checked against the item's SHA-256 while written), ``item.json``
(the item's row), ``evidence.json`` (every evidence record of the item, the export's own included) and
``chain_proof.json`` (the item's first record, every later record up to the head, and the head hash;
see :func:`proxy.evidence.verify_proof`). The export is recorded in the evidence log before anything is
read, so every access to the bytes is on record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.evidence import log as evidence
from proxy.evidence.quarantine import Quarantine, QuarantineError

#: Extensions for the media types pict-rs stores, ahead of the platform's mimetypes table.
_EXTENSIONS = {
    "image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
    "image/avif": "avif", "image/jxl": "jxl", "image/bmp": "bmp", "image/tiff": "tiff",
    "video/mp4": "mp4", "video/webm": "webm", "image/apng": "apng",
}


def object_extension(content_type: str) -> str:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _EXTENSIONS:
        return _EXTENSIONS[media_type]
    guessed = mimetypes.guess_extension(media_type) if media_type else None
    return guessed.lstrip(".") if guessed else "bin"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


async def export_item(quarantine: Quarantine, item_id: str, out: Path, *, actor: str,
                      record_only: bool = False, attribution: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the package to ``out`` (atomically); returns the export's evidence record."""
    item = await quarantine.get(item_id)
    if not item["bytes_kept"] and not record_only:
        why = "were purged" if item["status"] == "purged" else f"were never kept ({item['action']})"
        raise QuarantineError(f"item {item_id}: its bytes {why}; use --record-only to export the record")
    out = Path(out)
    if not out.parent.is_dir():
        raise QuarantineError(f"{out.parent}: no such folder")
    export_record = await quarantine.record_event(
        item_id, "export", actor=actor, detail={"out": out.name, "with_bytes": not record_only})
    records = await evidence.records_for_item(quarantine.engine, item_id)
    proof = await evidence.chain_proof(quarantine.engine, records[0]["seq"])
    fd, temp_name = tempfile.mkstemp(prefix=".export-", suffix=".zip", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(temp_name, "w", compression=zipfile.ZIP_DEFLATED) as package:
            if not record_only:
                name = f"object.{object_extension(item['content_type'])}"
                # Already-compressed media: stored, so the bytes in the zip are the bytes as caught.
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                digest = hashlib.sha256()
                with package.open(info, "w", force_zip64=True) as sink:
                    async for chunk in quarantine.store.open(item_id):
                        digest.update(chunk)
                        await asyncio.to_thread(sink.write, chunk)
                if digest.hexdigest() != item["sha256"]:
                    raise QuarantineError(f"item {item_id}: stored bytes do not match its SHA-256")
            package.writestr("item.json", _json_bytes(await quarantine.get(item_id)))
            package.writestr("evidence.json", _json_bytes(records))
            package.writestr("chain_proof.json", _json_bytes(proof))
            if attribution is not None:  # who uploaded it and where it is used (proxy/integrations/lemmy.py)
                package.writestr("attribution.json", _json_bytes(dict(attribution)))
        os.chmod(temp_name, 0o600)
        os.replace(temp_name, out)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return export_record
