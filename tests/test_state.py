"""The state database: migrations once each (also with two engines and two processes on one database), WAL and
busy timeout on SQLite, the multipart repository's compare-and-set, and DDL that is not SQLite-only.

Every database-backed test runs on SQLite and on a real PostgreSQL (`database_url`, tests/support/postgres.py).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from proxy.front.multipart import MultipartState, multipart_parts, new_upload_id
from proxy.state import MIGRATION_MODULES, Database, metadata, schema_migrations

REPO = Path(__file__).resolve().parents[1]


def all_migration_ids() -> list[str]:
    return [m.id for name in MIGRATION_MODULES for m in importlib.import_module(name).MIGRATIONS]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def two_databases(database_url: str) -> AsyncIterator[tuple[Database, Database]]:
    first, second = Database(database_url), Database(database_url)
    await first.migrate()
    yield first, second
    await first.close()
    await second.close()


async def test_migrate_applies_every_migration_once(database_url: str) -> None:
    db = Database(database_url)
    try:
        applied = await db.migrate()
        assert applied == all_migration_ids()
        assert "multipart-0001" in applied
        assert await db.migrate() == []
        async with db.engine.connect() as conn:
            recorded = (await conn.execute(select(schema_migrations.c.id))).scalars().all()
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            assert set(metadata.tables) <= set(tables)
        assert sorted(recorded) == sorted(applied)
    finally:
        await db.close()


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    """SQLite only by nature: WAL and the busy timeout are SQLite's ways of sharing one file."""
    db = Database(sqlite_url(tmp_path / "state.db"), busy_timeout_s=7)
    try:
        async with db.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 7000
        await db.ping()
    finally:
        await db.close()


async def test_two_engines_migrating_at_once_apply_each_migration_once(database_url: str) -> None:
    first, second = Database(database_url), Database(database_url)
    try:
        applied_first, applied_second = await asyncio.gather(first.migrate(), second.migrate())
    finally:
        await first.close()
        await second.close()
    assert sorted(applied_first + applied_second) == sorted(all_migration_ids())
    assert not set(applied_first) & set(applied_second)


def test_two_processes_migrating_at_once_apply_each_migration_once(database_url: str) -> None:
    url = database_url
    script = ("import asyncio, json, sys\nfrom proxy.state import Database\n"
              "async def main():\n    db = Database(sys.argv[1])\n    applied = await db.migrate()\n"
              "    await db.close()\n    print(json.dumps(applied))\nasyncio.run(main())\n")
    processes = [subprocess.Popen([sys.executable, "-c", script, url], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=60) for process in processes]
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
    applied = [json.loads(stdout) for stdout, _ in results]
    assert sorted(applied[0] + applied[1]) == sorted(all_migration_ids())
    assert not set(applied[0]) & set(applied[1])


async def create_upload(state: MultipartState, **overrides: str) -> str:
    upload_id = new_upload_id()
    values = {"upstream_upload_id": "up-1", "bucket": "pictrs", "real_bucket": "real", "key": "a/b.jpg",
              "staging_key": f".bucketguard/staging/{upload_id}", "access_key": "AKIA", "content_type": "image/jpeg"}
    values.update(overrides)
    await state.create(upload_id=upload_id, metadata={"x": "y"}, **values)
    return upload_id


async def test_an_upload_made_on_one_engine_is_served_by_the_other(two_databases) -> None:  # type: ignore[no-untyped-def]
    first, second = MultipartState(two_databases[0]), MultipartState(two_databases[1])
    upload_id = await create_upload(first)
    assert len(upload_id) >= 32 and upload_id.replace("-", "").replace("_", "").isalnum()
    upload = await second.get(upload_id)
    assert upload is not None
    assert (upload.bucket, upload.real_bucket, upload.key, upload.state) == ("pictrs", "real", "a/b.jpg", "open")
    assert upload.metadata == {"x": "y"} and upload.content_type == "image/jpeg"
    assert upload.staging_key == f".bucketguard/staging/{upload_id}"
    assert await second.get("no-such-upload") is None

    await first.record_part(upload_id, 1, 8 * 1024 * 1024, '"e1"', "m1")
    await second.record_part(upload_id, 2, 100, '"e2"', "m2")
    await second.record_part(upload_id, 1, 9 * 1024 * 1024, '"e1b"', "m1b")  # sent again: replaces
    parts = await first.parts(upload_id)
    assert sorted(parts) == [1, 2]
    assert (parts[1].size, parts[1].etag) == (9 * 1024 * 1024, '"e1b"')
    assert await first.total_size(upload_id) == 9 * 1024 * 1024 + 100
    assert await first.total_size("no-such-upload") == 0


async def test_the_same_part_recorded_concurrently_from_two_engines_leaves_one_row(two_databases) -> None:  # type: ignore[no-untyped-def]
    first, second = MultipartState(two_databases[0]), MultipartState(two_databases[1])
    upload_id = await create_upload(first)
    await asyncio.gather(*(state.record_part(upload_id, 3, size, f'"{size}"', "m")
                           for size in range(1, 21) for state in (first, second)))
    parts = await second.parts(upload_id)
    assert list(parts) == [3]
    assert parts[3].etag == f'"{parts[3].size}"'
    async with two_databases[0].engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(multipart_parts))).scalar_one()
    assert count == 1


async def test_only_one_replica_completes_an_upload(two_databases) -> None:  # type: ignore[no-untyped-def]
    first, second = MultipartState(two_databases[0]), MultipartState(two_databases[1])
    upload_id = await create_upload(first)
    claims = await asyncio.gather(*(state.mark_completing(upload_id) for state in (first, second) * 5))
    assert claims.count(True) == 1
    assert not await first.mark_aborted(upload_id)  # being completed: no longer abortable
    assert await second.mark_done(upload_id)
    assert not await first.mark_done(upload_id)
    assert (await first.get(upload_id)).state == "done"  # type: ignore[union-attr]

    other = await create_upload(second)
    assert await first.mark_aborted(other)
    assert not await second.mark_aborted(other)
    assert not await second.mark_completing(other)
    assert not await first.mark_completing("no-such-upload")

    await first.record_part(other, 1, 5, '"e"', "m")
    await first.forget_parts(other)
    assert await first.parts(other) == {}


async def test_stale_uploads(two_databases) -> None:  # type: ignore[no-untyped-def]
    state = MultipartState(two_databases[0])
    open_id = await create_upload(state)
    done_id = await create_upload(state)
    assert await state.mark_completing(done_id)
    await asyncio.sleep(0.01)
    assert [u.upload_id for u in await state.list_stale_uploads(timedelta(0))] == [open_id]
    assert {u.upload_id for u in await state.list_stale_uploads(timedelta(0), ("open", "completing"))} == {
        open_id, done_id}
    assert await state.list_stale_uploads(timedelta(hours=1)) == []


def test_schema_is_not_sqlite_only() -> None:
    """Every table contributed by a migration module compiles for PostgreSQL without a server (the tests above
    also create them on a real one)."""
    for name in MIGRATION_MODULES:
        importlib.import_module(name)
    dialect = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    assert {"schema_migrations", "multipart_uploads", "multipart_parts"} <= set(metadata.tables)
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert ddl.startswith("\nCREATE TABLE")
        for index in table.indexes:
            str(CreateIndex(index).compile(dialect=dialect))


async def test_postgresql_url_builds_an_asyncpg_engine_and_fails_clearly_without_a_server() -> None:
    db = Database("postgresql+asyncpg://bucketguard:secret@127.0.0.1:1/bucketguard")
    try:
        assert db.dialect == "postgresql"
        assert db.engine.dialect.driver == "asyncpg"
        with pytest.raises(OSError):
            await db.migrate()
    finally:
        await db.close()
