"""The state database: SQLAlchemy async on SQLite (default) or PostgreSQL, with migrations run at start-up.

Tables are defined by the modules that own them, on the shared :data:`metadata`; each such module exports
``MIGRATIONS`` and is listed in :data:`MIGRATION_MODULES`. Migrations are applied once each, in order,
under a database-wide lock so that two replicas starting together do not race.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, MetaData, String, Table, event, inspect, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import ClauseElement

metadata = MetaData()

#: Modules contributing tables, in the order their migrations run.
MIGRATION_MODULES: tuple[str, ...] = (
    "proxy.front.multipart",
    "proxy.evidence.log",
    "proxy.evidence.quarantine",
    "proxy.screening.cache",
    "proxy.jobs.pending",
    "proxy.jobs.pull",
    "proxy.federation.store",
    "proxy.jobs.scan_run",
    "proxy.admin.sessions",
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("applied_at", String(40), nullable=False),
)

_PG_MIGRATION_LOCK = 0x6275636B  # "buck"


@dataclass(frozen=True)
class Migration:
    """One schema change, applied once, in a synchronous connection inside the migration transaction."""

    id: str
    apply: Callable[[Connection], None]


def add_missing_columns(table: Table, *names: str) -> Callable[[Connection], None]:
    """A migration step that adds columns of `table` (as the Table now defines them) where they are missing.

    A database created after the columns were added to the Table already has them; an older one gets
    them with their server default, so existing rows stay valid.
    """

    def apply(conn: Connection) -> None:
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for name in names:
            if name in present:
                continue
            column = table.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            clause = ""
            if column.server_default is not None:
                arg = column.server_default.arg  # type: ignore[attr-defined]
                value = "'" + arg.replace("'", "''") + "'" if isinstance(arg, str) else str(arg)
                clause = f" NOT NULL DEFAULT {value}"
            conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{name}" {kind}{clause}')
        for index in table.indexes:
            index.create(conn, checkfirst=True)

    return apply


def create_tables(*tables: Table) -> Callable[[Connection], None]:
    """A migration step that creates the given tables (and their indexes)."""

    def apply(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)

    return apply


def widen_to_bigint(table: str, *columns: str) -> Callable[[Connection], None]:
    """A migration step that makes integer columns 64-bit where the engine has 32-bit INTEGER (PostgreSQL).

    SQLite's INTEGER is already 64-bit, so there it does nothing; on a fresh PostgreSQL database, where the
    table was just created with BIGINT, it changes nothing either.
    """

    def apply(conn: Connection) -> None:
        if conn.dialect.name != "postgresql":
            return
        for column in columns:
            conn.exec_driver_sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE BIGINT')

    return apply


class DatabaseUnavailable(Exception):
    """The configured database cannot be opened (server away, no such database, credentials refused).

    The message is one line and names the database by its URL without the password.
    """


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Database:
    """One async engine; SQLite gets WAL and a busy timeout so several processes can share the file."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        connect_args = {"timeout": busy_timeout_s} if url.startswith("sqlite") else {}
        # pre-ping only where connections cross a network; on SQLite it would double every round trip.
        self.engine: AsyncEngine = create_async_engine(url, connect_args=connect_args,
                                                       pool_pre_ping=not url.startswith("sqlite"))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def exclusive(self, lock_id: int) -> AsyncIterator[AsyncConnection]:
        """A transaction that holds a database-wide lock named by `lock_id` until it commits.

        SQLite: the write lock taken at BEGIN; PostgreSQL: a transaction-scoped advisory lock. Used where
        replicas or scanners must not both do a check-then-insert (migrations, joining a scan run).
        """
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await conn.begin()
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({int(lock_id)})")
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()

    async def migrate(self) -> list[str]:
        """Apply every migration not applied yet; returns the ids applied now."""
        applied_now: list[str] = []
        async with self.exclusive(_PG_MIGRATION_LOCK) as conn:
            await conn.run_sync(lambda c: schema_migrations.create(c, checkfirst=True))
            done = set((await conn.execute(select(schema_migrations.c.id))).scalars())
            for module_name in MIGRATION_MODULES:
                module = importlib.import_module(module_name)
                for migration in module.MIGRATIONS:
                    if migration.id in done:
                        continue
                    await conn.run_sync(migration.apply)
                    await conn.execute(schema_migrations.insert().values(id=migration.id, applied_at=now_text()))
                    applied_now.append(migration.id)
        return applied_now

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def reachable(self) -> None:
        """One round trip, or :class:`DatabaseUnavailable` saying why in one line."""
        try:
            await self.ping()
        except (OSError, DBAPIError) as exc:
            cause = getattr(exc, "orig", None) or exc
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            where = self.engine.url.render_as_string(hide_password=True)
            raise DatabaseUnavailable(f"cannot open the database {where}: {reason}") from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # Switching a new file to WAL needs it unlocked for a moment, and SQLite answers "database is locked" at
    # once (no busy handler) while another process is migrating it: try again for a while, as the timeout would.
    for attempt in range(200):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except Exception as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Compiled:
    """One statement compiled once as SQLite text, and the order of its named parameters: for the few hot
    statements run on the SQLite driver's own connection in one thread hop (the verdict-cache lookup, the
    federation step's lookup and reliance record), where the async engine's per-statement hops cost most of the
    time. The SQL is still built by SQLAlchemy from the same Table objects."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=sqlite_dialect.dialect())
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())

    def params(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(values[name] for name in self.names)
