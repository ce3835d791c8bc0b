"""The review page's export: the package is built in a private temporary folder, streamed, and deleted.

The folder is removed when the response ends, whether the download finished, the browser went away, or
building the package failed, so no copy of quarantined bytes outlives the request (and none can survive a
purge of the item).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

CHUNK_BYTES = 256 * 1024


async def build_export(quarantine: Any, item_id: str, *, actor: str, temp_root: str | None,
                       attribution: Any = None) -> tuple[Path, Path]:
    """(package, its private folder); the folder is already gone if building fails."""
    from proxy.evidence.export import export_item

    if temp_root:
        os.makedirs(temp_root, mode=0o700, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bucketguard-export-", dir=temp_root or None))  # mode 0700
    out = folder / f"bucketguard-{item_id}.zip"
    try:
        await export_item(quarantine, item_id, out, actor=actor, attribution=attribution)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return out, folder


async def stream_then_delete(package: Path, folder: Path) -> AsyncIterator[bytes]:
    """The package's bytes; the folder is deleted when the stream ends or is abandoned."""
    try:
        async with await anyio.open_file(package, "rb") as source:
            while chunk := await source.read(CHUNK_BYTES):
                yield chunk
    finally:
        shutil.rmtree(folder, ignore_errors=True)
