"""The two statements a federated decision makes, on SQLite, in one thread hop each.

Through the async engine a query costs several hops to aiosqlite's thread (cursor, execute, fetch, close, and a
BEGIN and COMMIT for a write) plus SQLAlchemy's per-call work; that was most of what a federated known-safe
decision cost. Here each statement is compiled once by SQLAlchemy from the same Table objects (so the SQL is
defined in one place, proxy.federation.store) and run on the driver's own connection in a dedicated thread:
one for reads (WAL readers never wait for a writer) and one for the reliance writes.

Durability of a write is what `FederationStore.relaxed` gives: committed before the call returns (atomic,
durable against a crash of this process), against power loss once a later commit syncs (synchronous=NORMAL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from proxy.state import Compiled


class _Lane:
    """One thread and its own connection to the file (opened on first use, in that thread)."""

    def __init__(self, path: str, name: str, pragmas: tuple[str, ...], busy_timeout_s: float) -> None:
        self.path, self.pragmas, self.busy_timeout_s = path, pragmas, busy_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.conn: sqlite3.Connection | None = None

    def connection(self) -> sqlite3.Connection:
        if self.conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
            for pragma in self.pragmas:
                conn.execute(f"PRAGMA {pragma}")
            self.conn = conn
        return self.conn

    def close(self) -> None:
        def shut() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        self.executor.submit(shut).result()
        self.executor.shutdown(wait=True)


class SqliteHotPath:
    def __init__(self, path: str, *, busy_timeout_s: float = 30.0) -> None:
        self._read = _Lane(path, "federation-read", ("query_only=ON",), busy_timeout_s)
        self._write = _Lane(path, "federation-write", ("synchronous=NORMAL",), busy_timeout_s)

    async def rows(self, statement: Compiled, values: dict[str, Any]) -> list[dict[str, Any]]:
        params = statement.params(values)

        def run() -> list[dict[str, Any]]:
            cursor = self._read.connection().execute(statement.sql, params)
            try:
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            finally:
                cursor.close()

        return await asyncio.get_running_loop().run_in_executor(self._read.executor, run)

    async def write(self, statement: Compiled, values: dict[str, Any]) -> None:
        """One statement in its own transaction, committed before this returns."""
        params = statement.params(values)

        def run() -> None:
            conn = self._write.connection()
            with conn:  # commits, or rolls back on an error
                conn.execute(statement.sql, params)

        await asyncio.get_running_loop().run_in_executor(self._write.executor, run)

    def close(self) -> None:
        self._read.close()
        self._write.close()
