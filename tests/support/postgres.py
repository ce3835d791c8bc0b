"""A real PostgreSQL for the suite: Debian's server binaries, one throw-away cluster per test session.

The cluster lives in a fresh temporary folder, listens on a free loopback port and a unix socket in that
folder, and accepts the local `bucketguard` role with a password (scram). initdb and the server refuse to
run as root, so under root they run as Debian's `postgres` user (runuser); as anyone else they run as that
user. Each test that asks for `database_url` gets a database of its own (CREATE DATABASE), parametrised over
SQLite and PostgreSQL, so every database-backed test runs on both engines.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import pytest
from sqlalchemy import Executable, text

from proxy.state import Database

PG_USER = "bucketguard"
PG_PASSWORD = "bucketguard-test-secret"
_database_counter = count(1)


def pg_bindir() -> Path:
    """The folder holding initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found: install Debian's `postgresql` "
                           "(scripts/bootstrap dev does)")
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running cluster: `url(db)` is an SQLAlchemy asyncpg URL, `dsn(db)` a libpq/asyncpg DSN."""

    host: str
    port: int
    datadir: Path
    bindir: Path
    run_as: str | None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@{self.host}:{self.port}/{database}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{PG_USER}:{PG_PASSWORD}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql as the test role; returns its unaligned output."""
        result = subprocess.run([str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                 "-d", self.dsn(database), "-c", sql],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{os.getpid()}_{next(_database_counter)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name


def _as_user(run_as: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", run_as, "--", *argv] if run_as else argv


def start_postgres(base: Path | None = None) -> PostgresServer:
    bindir = pg_bindir()
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="bg-pg-", dir=base))
    datadir, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (root, socket_dir, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    subprocess.run(_as_user(run_as, [str(bindir / "initdb"), "-D", str(datadir), "-U", PG_USER, "-A", "scram-sha-256",
                                      f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
                   check=True, capture_output=True, timeout=120)
    port = _free_port()
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={socket_dir} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
               "-c shared_buffers=32MB")
    subprocess.run(_as_user(run_as, [str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-l",
                                      str(root / "server.log"), "-w", "-t", "60", "start"]),
                   check=True, capture_output=True, timeout=90)
    server = PostgresServer("127.0.0.1", port, datadir, bindir, run_as)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.psql("SELECT 1")
            return server
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop_postgres(server: PostgresServer) -> None:
    subprocess.run(_as_user(server.run_as, [str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-m",
                                             "immediate", "-w", "stop"]), capture_output=True, timeout=60)
    shutil.rmtree(server.datadir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session (started on first use)."""
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """An SQLAlchemy URL to a fresh, empty PostgreSQL database."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty state database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url(server.create_database())


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated state database on `database_url`: once on SQLite and once on PostgreSQL."""
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh state database shared by one module's tests, once on SQLite and once on PostgreSQL: for a module
    whose tests share one server per engine."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url(server.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], str]:
    """Makes fresh, empty state databases, all on one engine: SQLite in one run, PostgreSQL in the other (for a
    test that starts several instances, each with its own database)."""
    if request.param == "sqlite":
        return lambda: f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return lambda: server.url(server.create_database())


def run_sql(url: str, sql: str | Executable, **params: object) -> list[tuple]:
    """One SQL statement (text with `:name` parameters, or an SQLAlchemy statement) on a state database, SQLite
    or PostgreSQL, from synchronous test code, through the product's own Database settings; returns its rows
    (none for a write, which is committed)."""
    async def run() -> list[tuple]:
        db = Database(url)
        try:
            async with db.engine.begin() as conn:
                result = await conn.execute(text(sql) if isinstance(sql, str) else sql, params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            await db.close()

    return asyncio.run(run())
