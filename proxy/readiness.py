"""What `/readyz` checks: everything an upload needs before it can land, each problem named in one line.

- the state database answers a query on a real table (on SQLite, the file is still the one opened at start:
  a deleted or replaced file leaves old pooled connections answering while every new one fails);
- the spool folder and the local quarantine folder are folders this process can write, with at least
  ``limits.min_free_disk_bytes`` free (a full disk otherwise shows only as failing uploads);
- the upstream buckets answer (checked last: the slowest).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from proxy.config import Config
from proxy.state import Database, schema_migrations

CHECK_TIMEOUT_S = 5.0


class DatabaseCheck:
    """Remembers which SQLite file was there at the first check, so a replaced file is noticed."""

    def __init__(self, db: Database) -> None:
        self.db = db
        url = make_url(db.url)
        name = url.database or ""
        self.path = Path(name) if url.get_backend_name() == "sqlite" and name not in ("", ":memory:") else None
        self._inode: int | None = None
        if self.path is not None and self.path.exists():
            self._inode = self.path.stat().st_ino

    async def problem(self) -> str | None:
        if self.path is not None:
            try:
                inode = self.path.stat().st_ino
            except OSError as exc:
                return f"database: the SQLite file {self.path} is gone ({exc.strerror})"
            if self._inode is None:
                self._inode = inode
            elif inode != self._inode:
                return f"database: the SQLite file {self.path} was replaced since it was opened"
        try:
            async with self.db.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(select(schema_migrations.c.id).limit(1)), CHECK_TIMEOUT_S)
        except Exception as exc:  # any failure means uploads cannot be recorded
            return f"database: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'}"
        return None


def folder_problem(name: str, folder: str | Path, min_free_bytes: int) -> str | None:
    """A folder files are written to (made on first use): writable, on a disk with room left."""
    path = Path(folder).resolve()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{name}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{name}: {existing} is not writable"
    free = shutil.disk_usage(existing).free
    if free < min_free_bytes:
        return f"{name}: disk full at {path} ({free} bytes free, at least {min_free_bytes} needed)"
    return None


async def readiness_problems(config: Config, database: DatabaseCheck, upstream: Any) -> list[str]:
    """Every reason the proxy cannot take uploads now; empty when ready."""
    problems = []
    if (problem := await database.problem()) is not None:
        problems.append(problem)
    minimum = config.limits.min_free_disk_bytes
    spool = folder_problem("spool", config.limits.spool_dir or tempfile.gettempdir(), minimum)
    if spool is not None:
        problems.append(spool)
    if config.quarantine.store == "local":
        quarantine = folder_problem("quarantine", config.quarantine.path, minimum)
        if quarantine is not None:
            problems.append(quarantine)
    try:
        await asyncio.wait_for(upstream.ready(sorted(set(config.bucket_map.values()))), CHECK_TIMEOUT_S * 2)
    except Exception as exc:  # readiness reports any failure as not ready
        problems.append(f"upstream: {exc or type(exc).__name__}")
    return problems
