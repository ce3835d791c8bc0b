"""The loop back to pict-rs: a hit found after landing is purged from pict-rs once it is in quarantine.

pict-rs does not run here: these tests talk to an emulation of its admin API (tests/support/pictrs.py) that
implements exactly the documented /internal/purge, /internal/aliases and /internal/identifier endpoints.
A deferred-scan hit goes the same way (`bucketguard serve` with an inference service that comes back).
The bucket is moto's server, the databases are a real PostgreSQL (Lemmy 1.0's local_image for the alias
candidates; pict-rs's repository tables for the direct key -> alias lookup).
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image
from sqlalchemy import select

from proxy.evidence import log as evidence
from proxy.evidence.quarantine import quarantine_items
from proxy.integrations.pictrs import PictrsAdmin, PictrsPurger, read_only_engine
from proxy.screening.testimage import generate_png
from proxy.state import Database
from tests.support.lemmy import seed
from tests.support.moto import S3Server
from tests.support.pictrs import PICTRS_REPO_DDL, StoredFile, start_pictrs
from tests.support.postgres import PostgresServer
from tests.support.proxy import CLIENT_BUCKET, new_bucket, start_subprocess, write_config
from tests.test_deferred_scans import deferred_setup, start_inference, wait_for  # noqa: F401 - the fixture

API_KEY = "pictrs-api-key-0123"


def objects() -> dict[str, bytes]:
    photo = Image.fromarray(skimage.data.coffee()).convert("RGB").resize((80, 60))
    test = Image.open(io.BytesIO(generate_png())).convert("RGB")
    out: dict[str, bytes] = {}
    for index in range(8):
        buffer = io.BytesIO()
        if index % 3 == 0:
            test.resize((420 - index, 315 - index)).save(buffer, "WEBP", quality=75)
        else:
            image = photo.copy()
            image.putpixel((index, index), (index * 20, 0, 0))
            image.save(buffer, "JPEG", quality=80)
        out[f"ab/cd/{index:02d}/{'hit' if index % 3 == 0 else 'ok'}{index}.webp"] = buffer.getvalue()
    return out


def alias_of(key: str) -> str:
    return key.rsplit("/", 1)[1].replace(".webp", "-alias.webp")


def scan(config: Path, tmp: Path) -> dict:
    report = tmp / "report.json"
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "scan", "--config", str(config), "--bucket",
                           CLIENT_BUCKET, "--no-progress", "--report", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text())


def setup_scan(moto_server: S3Server, postgres_server: PostgresServer, test_pack_path: Path, tmp: Path,
               pictrs_endpoint: str, api_key: str) -> tuple[Path, str, dict[str, bytes], str]:
    stored = objects()
    bucket = new_bucket(moto_server)
    for key, data in stored.items():
        moto_server.client().put_object(Bucket=bucket, Key=key, Body=data)
    lemmy = postgres_server.create_database("lemmy")
    postgres_server.psql(seed("1.0", uploaded="u.webp", other="o.webp", federated_thumb="t.webp"), lemmy)
    values = ", ".join(f"('{alias_of(k)}', 1)" for k in stored)
    postgres_server.psql(f"INSERT INTO local_image (pictrs_alias, person_id) VALUES {values}", lemmy)
    state = postgres_server.url(postgres_server.create_database("state"))
    policy = tmp / "policy.toml"
    policy.write_text('on_undecodable = "reject"\non_non_media = "flag"\n')
    config = write_config(tmp, moto_server, bucket, inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]',
                          screening=f'policy = "{policy}"',
                          extra=(f'[pictrs]\nendpoint = "{pictrs_endpoint}"\napi_key = "{api_key}"\n'
                                 f'[lemmy]\ndatabase_url = "{postgres_server.dsn(lemmy)}"\n'))
    text = config.read_text()
    start = text.index('url = "sqlite')
    config.write_text(text[:start] + f'url = "{state}"' + text[text.index("\n", start):])
    return config, bucket, stored, state


async def _chain(state: str) -> tuple[bool, dict[str, list[dict]]]:
    db = Database(state)
    try:
        ok = (await evidence.verify(db.engine)).ok
        async with db.engine.connect() as conn:
            items = (await conn.execute(select(quarantine_items))).mappings().all()
        records = {item["key"]: await evidence.records_for_item(db.engine, item["id"]) for item in items}
        kept = {item["key"]: bool(item["bytes_kept"]) for item in items}
        assert all(kept.values())
        return ok, records
    finally:
        await db.close()


@pytest.mark.slow
def test_backfill_hits_are_purged_from_pictrs_after_quarantine(moto_server: S3Server, postgres_server: PostgresServer,
                                                              test_pack_path: Path, tmp_path: Path) -> None:
    pictrs = start_pictrs(API_KEY)
    try:
        config, bucket, stored, state = setup_scan(moto_server, postgres_server, test_pack_path, tmp_path,
                                                   pictrs.endpoint, API_KEY)
        for key in stored:
            pictrs.emulation.add(StoredFile(hash=f"h-{key}", identifier=key, aliases=[alias_of(key), f"x-{key[-9:]}"]))
        report = scan(config, tmp_path)
    finally:
        pictrs.stop()
    hits = {k for k in stored if "/hit" in k}
    assert report["outcomes"] == {"clean": len(stored) - len(hits), "quarantined": len(hits)}
    assert set(moto_server.keys(bucket)) == set(stored) - hits
    assert {f.identifier for f in pictrs.emulation.purged} == hits  # hits purged, nothing else
    assert all(call[2] in {alias_of(k) for k in hits} for call in pictrs.emulation.calls if call[0] == "POST")
    assert set(pictrs.emulation.files) == {f"h-{k}" for k in stored if k not in hits}
    ok, records = asyncio.run(_chain(state))
    assert ok and set(records) == hits
    for key, chain in records.items():
        assert [r["event"] for r in chain] == ["quarantine", "pictrs-purge"]  # quarantined first, then purged
        detail = chain[1]["detail"]
        assert detail["status"] == "purged" and detail["aliases"] == sorted([alias_of(key), f"x-{key[-9:]}"])
        assert detail["resolved_by"] == "Lemmy aliases + /internal/identifier"


@pytest.mark.slow
def test_a_refused_purge_is_recorded_and_the_scan_goes_on(moto_server: S3Server, postgres_server: PostgresServer,
                                                          test_pack_path: Path, tmp_path: Path) -> None:
    pictrs = start_pictrs(API_KEY)
    try:
        config, bucket, stored, state = setup_scan(moto_server, postgres_server, test_pack_path, tmp_path,
                                                   pictrs.endpoint, "a-wrong-key")
        for key in stored:
            pictrs.emulation.add(StoredFile(hash=f"h-{key}", identifier=key, aliases=[alias_of(key)]))
        report = scan(config, tmp_path)
    finally:
        pictrs.stop()
    hits = {k for k in stored if "/hit" in k}
    assert report["outcomes"]["quarantined"] == len(hits) and not pictrs.emulation.purged
    assert set(moto_server.keys(bucket)) == set(stored) - hits  # out of the bucket all the same
    ok, records = asyncio.run(_chain(state))
    assert ok and set(records) == hits
    for chain in records.values():
        assert chain[1]["event"] == "pictrs-purge" and chain[1]["detail"]["status"] == "failed"
        assert "HTTP 401" in chain[1]["detail"]["error"]


async def test_keys_of_originals_stills_and_variants_resolve_through_pictrs_repository(
        postgres_server: PostgresServer) -> None:
    repo = postgres_server.create_database("pictrs")
    postgres_server.psql(PICTRS_REPO_DDL + """
INSERT INTO hashes (hash, identifier, motion_identifier) VALUES ('h1', 'k/orig.mp4', 'k/still.png'),
                                                               ('h2', 'k/other.png', NULL);
INSERT INTO variants (hash, variant, identifier) VALUES ('h1', 'thumbnail=256', 'k/thumb.webp');
INSERT INTO aliases (alias, hash, token) VALUES ('a1.mp4', 'h1', 't'), ('a2.mp4', 'h1', 't'), ('b.png', 'h2', 't');
""", repo)
    pictrs = start_pictrs(API_KEY)
    purger = PictrsPurger(PictrsAdmin(pictrs.endpoint, API_KEY), repo=read_only_engine(postgres_server.dsn(repo)))
    try:
        pictrs.emulation.add(StoredFile("h1", "k/orig.mp4", ["a1.mp4", "a2.mp4"], {"thumbnail=256": "k/thumb.webp"},
                                        "k/still.png"))
        pictrs.emulation.add(StoredFile("h2", "k/other.png", ["b.png"]))
        for key in ("k/orig.mp4", "k/still.png", "k/thumb.webp"):
            assert await purger.aliases_of(key) == (["a1.mp4", "a2.mp4"], "pict-rs repository")
        assert await purger.aliases_of("k/unknown.png") == ([], "pict-rs repository")
        result = await purger.purge_key("k/thumb.webp")
        assert result.error == "" and result.purged == ("a1.mp4", "a2.mp4")
        assert [f.hash for f in pictrs.emulation.purged] == ["h1"] and list(pictrs.emulation.files) == ["h2"]
        assert (await purger.purge_key("k/unknown.png")).error == "no pict-rs alias found for this key"
    finally:
        await purger.close()
        pictrs.stop()


@pytest.mark.slow
def test_a_deferred_scan_hit_is_purged_from_pictrs(deferred_setup, moto_server: S3Server,  # noqa: F811
                                                   postgres_server: PostgresServer, test_pack_path: Path) -> None:
    """`bucketguard serve` lands uploads while the detectors are away (defer); when they are back the hit is
    moved to quarantine and purged from pict-rs (the emulation), recorded after its quarantine record."""
    setup = deferred_setup
    lemmy = postgres_server.create_database("lemmy")
    postgres_server.psql(seed("1.0", uploaded="hit-alias.png", other="clean-alias.png", federated_thumb="t.webp"),
                         lemmy)
    pictrs = start_pictrs(API_KEY)
    pictrs.emulation.add(StoredFile("h-hit", "hit.png", ["hit-alias.png"]))
    pictrs.emulation.add(StoredFile("h-clean", "clean.png", ["clean-alias.png"]))
    config: Path = setup["config"]
    config.write_text(config.read_text() + f'\n[pictrs]\nendpoint = "{pictrs.endpoint}"\napi_key = "{API_KEY}"\n'
                                           f'[lemmy]\ndatabase_url = "{postgres_server.dsn(lemmy)}"\n')
    proxy = start_subprocess(config, moto_server, setup["bucket"])
    service = None
    try:
        s3 = proxy.client()
        s3.put_object(Bucket=CLIENT_BUCKET, Key="hit.png", Body=setup["target"], ContentType="image/png")
        s3.put_object(Bucket=CLIENT_BUCKET, Key="clean.png", Body=setup["clean"], ContentType="image/png")
        service = start_inference(test_pack_path, setup["port"])
        wait_for(lambda: [f.hash for f in pictrs.emulation.purged] == ["h-hit"], what="the purge of the hit")
    finally:
        proxy.stop()
        pictrs.stop()
        if service is not None:
            service.terminate()
            service.wait(10)
    assert moto_server.keys(setup["bucket"]) == ["clean.png"] and list(pictrs.emulation.files) == ["h-clean"]
    shown = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "list", "--json", "--config",
                            str(config)], capture_output=True, text=True, timeout=60)
    item = json.loads(shown.stdout)[0]
    detail = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "show", item["id"], "--json",
                             "--config", str(config)], capture_output=True, text=True, timeout=60)
    shown_item = json.loads(detail.stdout)
    assert [r["event"] for r in shown_item["evidence"]] == ["quarantine", "pictrs-purge"]
    assert shown_item["evidence"][1]["actor"] == "deferred-scan"
    assert [u["account"] for u in shown_item["attribution"]["uploaders"]] == ["alice"]
