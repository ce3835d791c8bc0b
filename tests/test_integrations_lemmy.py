"""Attribution from Lemmy's database: a real PostgreSQL loaded with the attribution part of Lemmy's schema,
as 0.19 and as 1.0 leave it (tests/support/lemmy.py), read through a read-only connection."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from proxy.evidence import log as evidence
from proxy.evidence.quarantine import Catch, Quarantine
from proxy.evidence.store import LocalStore
from proxy.integrations.lemmy import LemmyDatabase
from proxy.integrations.pictrs import read_only_engine
from proxy.state import Database
from proxy.storage.spool import SpooledBody
from tests.support.lemmy import LOCAL, REMOTE, seed
from tests.support.moto import S3Server
from tests.support.postgres import PostgresServer
from tests.support.proxy import write_config

UPLOADED, OTHER, THUMB = "1f0e2d3c-aaaa-4bbb-8ccc-000000000001.webp", "77_other%.png", "5e5e-thumb.jpg"


@pytest.fixture(params=["0.19", "1.0"])
def lemmy_db(request: pytest.FixtureRequest, postgres_server: PostgresServer) -> tuple[str, str]:
    name = postgres_server.create_database("lemmy")
    postgres_server.psql(seed(request.param, uploaded=UPLOADED, other=OTHER, federated_thumb=THUMB), name)
    return request.param, postgres_server.dsn(name)


async def test_uploader_posts_and_comments_of_a_local_upload(lemmy_db: tuple[str, str]) -> None:
    version, url = lemmy_db
    lemmy = LemmyDatabase(read_only_engine(url))
    try:
        assert (await lemmy.schema()).version == version
        found = await lemmy.attribute([UPLOADED])
        assert found["lemmy"] == version
        assert found["uploaders"] == [{"alias": UPLOADED, "account": "alice", "actor": f"https://{LOCAL}/u/alice",
                                       "instance": LOCAL}]
        assert [(p["ap_id"], p["author"], p["local"], p["used_as"]) for p in found["posts"]] == [
            (f"https://{LOCAL}/post/100", "alice", True, ["url"])]
        assert [(c["ap_id"], c["author"], c["post"]) for c in found["comments"]] == [
            (f"https://{LOCAL}/comment/1000", "bob", f"https://{LOCAL}/post/300")]
    finally:
        await lemmy.close()


async def test_a_federated_thumbnail_names_the_post_and_its_instance(lemmy_db: tuple[str, str]) -> None:
    _, url = lemmy_db
    lemmy = LemmyDatabase(read_only_engine(url))
    try:
        found = await lemmy.attribute([THUMB])
        assert found["uploaders"] == []  # nobody here uploaded it
        assert [(p["ap_id"], p["author"], p["instance"], p["local"], p["used_as"]) for p in found["posts"]] == [
            (f"https://{REMOTE}/post/7", "carol", REMOTE, False, ["thumbnail_url"])]
        # LIKE wildcards in an alias are matched literally: '77_other%' names only itself
        other = await lemmy.attribute([OTHER])
        assert [u["account"] for u in other["uploaders"]] == ["dave"] and other["posts"] == []
        assert await lemmy.attribute(["no-such-alias.png"]) == {
            "lemmy": (await lemmy.schema()).version, "aliases": ["no-such-alias.png"], "uploaders": [], "posts": [],
            "comments": []}
        assert set(await lemmy.aliases()) == {UPLOADED, OTHER, THUMB}
    finally:
        await lemmy.close()


async def test_lemmy_is_only_read(lemmy_db: tuple[str, str]) -> None:
    _, url = lemmy_db
    engine = read_only_engine(url)
    try:
        with pytest.raises(DBAPIError, match="read-only"):
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM comment"))
    finally:
        await engine.dispose()


async def test_a_database_that_is_not_lemmys_is_named(postgres_server: PostgresServer) -> None:
    lemmy = LemmyDatabase(read_only_engine(postgres_server.dsn(postgres_server.create_database("empty"))))
    try:
        with pytest.raises(RuntimeError, match="no local_image table"):
            await lemmy.schema()
    finally:
        await lemmy.close()


def test_quarantine_show_and_export_name_the_uploader(lemmy_db: tuple[str, str], tmp_path: Path,
                                                       moto_server: S3Server) -> None:
    """`quarantine show` and `quarantine export` carry the attribution, from the aliases recorded when the
    file was purged from pict-rs (pict-rs no longer knows them then)."""
    version, url = lemmy_db
    config = write_config(tmp_path, moto_server, "unused", extra=f'[lemmy]\ndatabase_url = "{url}"\n')
    data = b"caught bytes"
    body = SpooledBody.from_bytes(data)

    async def record() -> str:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
        await db.migrate()
        try:
            quarantine = Quarantine(db.engine, LocalStore(tmp_path / "quarantine"))
            item_id = await quarantine.record(Catch("quarantine", "pictrs", "ab/cd/file.webp", "backfill",
                                                    "image/webp", body.size, body.sha256, body.md5), body=data)
            await evidence.append_one(db.engine, evidence.Event(
                event="pictrs-purge", item_id=item_id, actor="backfill", key="ab/cd/file.webp",
                detail={"aliases": [UPLOADED], "status": "purged"}))
            return item_id
        finally:
            await db.close()

    item_id = asyncio.run(record())
    shown = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "show", item_id, "--json", "--config",
                            str(config)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    attribution = json.loads(shown.stdout)["attribution"]
    assert attribution["lemmy"] == version and [u["account"] for u in attribution["uploaders"]] == ["alice"]
    assert [p["ap_id"] for p in attribution["posts"]] == [f"https://{LOCAL}/post/100"]
    out = tmp_path / "package.zip"
    exported = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "export", item_id, "--out", str(out),
                               "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    with zipfile.ZipFile(out) as package:
        packed = json.loads(package.read("attribution.json"))
    assert packed["uploaders"] == attribution["uploaders"] and packed["comments"] == attribution["comments"]
