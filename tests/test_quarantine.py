"""The quarantine: stores (local folder, S3 on moto), recording, retention, hold, purge, export, CLI."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import stat
import textwrap
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import func, select

from proxy.cli import main as cli_main
from proxy.config import QuarantineConfig
from proxy.evidence import log as evidence
from proxy.evidence.export import export_item
from proxy.evidence.quarantine import Catch, Quarantine, QuarantineError, quarantine_items
from proxy.evidence.store import LocalStore, S3Store, StoreError
from proxy.state import Database

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def catch_for(data: bytes, action: str = "quarantine", **overrides: Any) -> Catch:
    fields: dict[str, Any] = dict(
        action=action, bucket="pict-rs", key=f"files/{uuid.uuid4().hex}.png", access_key="AKPICTRS",
        content_type="image/png", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(), pdq="0f" * 32, signals={"nsfw": 0.97}, rule="nsfw-high",
        category="sexual", pack_versions={"nsfw-small": "2"}, policy_version="policy-3",
    )
    fields.update(overrides)
    return Catch(**fields)


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@pytest.fixture
def quarantine(db: Database, tmp_path: Path) -> Quarantine:
    return Quarantine(db.engine, LocalStore(tmp_path / "quarantine"), retention_days=365)


async def count_items(db: Database) -> int:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(quarantine_items))).scalar_one()


# -- stores -------------------------------------------------------------------------------------------


async def test_local_store_writes_privately_and_atomically(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "q")
    item_id = uuid.uuid4().hex
    stored = await store.put(item_id, io.BytesIO(PNG), len(PNG))
    assert (stored.size, stored.sha256, stored.md5) == (
        len(PNG), hashlib.sha256(PNG).hexdigest(), hashlib.md5(PNG).hexdigest())
    assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "q" / item_id).stat().st_mode) == 0o600
    assert await read_all(store.open(item_id)) == PNG
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [item_id]
    assert await store.exists(item_id)
    await store.delete(item_id)
    assert not await store.exists(item_id)
    with pytest.raises(StoreError, match="has no bytes"):
        await read_all(store.open(item_id))


async def test_local_store_refuses_wrong_lengths_and_bad_ids(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "q")
    with pytest.raises(StoreError, match="ended after 10 of 11 bytes"):
        await store.put(uuid.uuid4().hex, b"0123456789", 11)
    with pytest.raises(StoreError, match="longer than the 9 bytes"):
        await store.put(uuid.uuid4().hex, b"0123456789", 9)
    assert list((tmp_path / "q").iterdir()) == []  # no temp files left behind
    with pytest.raises(StoreError, match="not a quarantine item id"):
        await store.put("../escape", b"x", 1)


async def test_s3_store_round_trip(moto_server: Any) -> None:
    bucket = f"quarantine-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                 aws_access_key_id="qkey", aws_secret_access_key="qsecret").create_bucket(Bucket=bucket)
    store = S3Store(QuarantineConfig(store="s3", bucket=bucket, endpoint=moto_server.endpoint,
                                     access_key="qkey", secret_key="qsecret"))
    try:
        item_id = uuid.uuid4().hex
        stored = await store.put(item_id, PNG, len(PNG))
        assert stored.sha256 == hashlib.sha256(PNG).hexdigest()
        assert await store.exists(item_id)
        assert await read_all(store.open(item_id)) == PNG
        with pytest.raises(StoreError, match="ended after"):
            await store.put(uuid.uuid4().hex, PNG[:100], 101)
        await store.delete(item_id)
        assert not await store.exists(item_id)
        with pytest.raises(StoreError, match="has no bytes"):
            await read_all(store.open(item_id))
    finally:
        await store.close()


async def test_quarantine_on_the_s3_store(db: Database, moto_server: Any) -> None:
    bucket = f"quarantine-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                 aws_access_key_id="qkey", aws_secret_access_key="qsecret").create_bucket(Bucket=bucket)
    store = S3Store(QuarantineConfig(store="s3", bucket=bucket, endpoint=moto_server.endpoint,
                                     access_key="qkey", secret_key="qsecret"))
    try:
        item_id = await Quarantine(db.engine, store).record(catch_for(PNG), body=PNG)
        assert await read_all(store.open(item_id)) == PNG
    finally:
        await store.close()


# -- recording ----------------------------------------------------------------------------------------


async def test_quarantine_keeps_bytes_item_and_record(quarantine: Quarantine, db: Database) -> None:
    catch = catch_for(PNG)
    item_id = await quarantine.record(catch, body=io.BytesIO(PNG))
    item = await quarantine.get(item_id)
    assert item["status"] == "quarantined" and item["bytes_kept"] and not item["legal_hold"]
    assert (item["sha256"], item["md5"], item["key"], item["signals"]) == (
        catch.sha256, catch.md5, catch.key, {"nsfw": 0.97})
    assert await read_all(quarantine.store.open(item_id)) == PNG
    [record] = await evidence.records_for_item(db.engine, item_id)
    assert record["event"] == "quarantine" and record["actor"] == "AKPICTRS"
    assert (record["sha256"], record["rule"], record["pack_versions"]) == (
        catch.sha256, "nsfw-high", {"nsfw-small": "2"})
    assert record["time"] == item["created_at"]
    assert (await evidence.verify(db.engine)).ok


async def test_reject_and_flag_keep_no_bytes(quarantine: Quarantine, tmp_path: Path) -> None:
    rejected = await quarantine.record(catch_for(PNG, "reject"), body=PNG)
    flagged = await quarantine.record(catch_for(PNG, "flag"))
    assert (await quarantine.get(rejected))["status"] == "rejected"
    assert (await quarantine.get(flagged))["status"] == "flagged"
    assert not (await quarantine.get(rejected))["bytes_kept"]
    assert not (tmp_path / "quarantine").exists() or list((tmp_path / "quarantine").iterdir()) == []
    with pytest.raises(QuarantineError, match="cannot record action 'allow'"):
        await quarantine.record(catch_for(PNG, "allow"))


async def test_bytes_not_matching_the_screened_hash_leave_nothing(quarantine: Quarantine, db: Database,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="do not match the screened hashes"):
        await quarantine.record(catch_for(PNG), body=PNG[:-1] + b"X")
    assert list((tmp_path / "quarantine").iterdir()) == []
    assert await count_items(db) == 0
    assert await evidence.verify(db.engine) == evidence.VerifyResult(count=0)


async def test_failed_record_deletes_the_bytes_again(quarantine: Quarantine, db: Database,
                                                     tmp_path: Path) -> None:
    with pytest.raises(evidence.EvidenceError, match="non-finite"):
        await quarantine.record(catch_for(PNG, signals={"nsfw": float("inf")}), body=PNG)
    assert list((tmp_path / "quarantine").iterdir()) == []
    assert await count_items(db) == 0
    assert await evidence.verify(db.engine) == evidence.VerifyResult(count=0)


# -- retention, hold, purge -------------------------------------------------------------------------


async def test_purge_before_expiry_needs_force_and_is_recorded(quarantine: Quarantine, db: Database) -> None:
    item_id = await quarantine.record(catch_for(PNG), body=PNG)
    with pytest.raises(QuarantineError, match="use --force"):
        await quarantine.purge(item_id, actor="operator:alice")
    assert await quarantine.store.exists(item_id)
    record = await quarantine.purge(item_id, actor="operator:alice", force=True)
    assert record["event"] == "purge" and record["detail"]["forced"] is True
    item = await quarantine.get(item_id)
    assert (item["status"], item["bytes_kept"]) == ("purged", False)
    assert item["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert not await quarantine.store.exists(item_id)
    with pytest.raises(QuarantineError, match="no bytes to purge"):
        await quarantine.purge(item_id, actor="operator:alice", force=True)
    assert (await evidence.verify(db.engine)) == evidence.VerifyResult(count=2)


async def test_retention_counts_from_report_and_hold_blocks_purge(quarantine: Quarantine,
                                                                   db: Database) -> None:
    now = datetime.now(UTC)
    plain = await quarantine.record(catch_for(PNG), body=PNG)
    reported = await quarantine.record(catch_for(PNG), body=PNG)
    held = await quarantine.record(catch_for(PNG), body=PNG)
    flagged = await quarantine.record(catch_for(PNG, "flag"))
    await quarantine.mark_reported(reported, ref="NCMEC-123", actor="operator:alice",
                                   now=now + timedelta(days=200))
    await quarantine.hold(held, reason="police request 42", actor="operator:alice")

    assert [i["id"] for i in await quarantine.expired(now + timedelta(days=364))] == []
    later = now + timedelta(days=366)
    assert [i["id"] for i in await quarantine.expired(later)] == [plain]
    with pytest.raises(QuarantineError, match="legal hold"):
        await quarantine.purge(held, actor="operator:alice", force=True)

    purged = await quarantine.purge_expired(actor="operator:bob", now=later)
    assert [i["id"] for i in purged] == [plain]
    assert (await quarantine.get(plain))["status"] == "purged"
    for kept in (reported, held):
        assert await quarantine.store.exists(kept)
        assert (await quarantine.get(kept))["status"] == "quarantined"
    assert (await quarantine.get(flagged))["status"] == "flagged"
    [_, purge_record] = await evidence.records_for_item(db.engine, plain)
    assert (purge_record["event"], purge_record["actor"], purge_record["detail"]["forced"]) == (
        "purge", "operator:bob", False)

    # The report moved the reported item's retention to report date + 365 days.
    assert [i["id"] for i in await quarantine.expired(now + timedelta(days=566))] == [reported]
    await quarantine.unhold(held, actor="operator:alice")
    with pytest.raises(QuarantineError, match="not on legal hold"):
        await quarantine.unhold(held, actor="operator:alice")
    assert {i["id"] for i in await quarantine.expired(now + timedelta(days=566))} == {reported, held}
    assert (await evidence.verify(db.engine)).ok


async def test_operator_actions_need_their_reason(quarantine: Quarantine) -> None:
    item_id = await quarantine.record(catch_for(PNG), body=PNG)
    with pytest.raises(QuarantineError, match="--ref"):
        await quarantine.mark_reported(item_id, ref=" ", actor="operator")
    with pytest.raises(QuarantineError, match="--reason"):
        await quarantine.hold(item_id, reason="", actor="operator")
    with pytest.raises(QuarantineError, match="no quarantine item"):
        await quarantine.hold("f" * 32, reason="x", actor="operator")


# -- export -------------------------------------------------------------------------------------------


async def test_export_package_is_complete_and_recorded(quarantine: Quarantine, db: Database,
                                                        tmp_path: Path) -> None:
    item_id = await quarantine.record(catch_for(PNG), body=PNG)
    await quarantine.mark_reported(item_id, ref="NCMEC-7", actor="operator:alice")
    await quarantine.record(catch_for(b"other", "flag"))  # a later record of another item
    out = tmp_path / "package.zip"
    export_record = await export_item(quarantine, item_id, out, actor="operator:alice")
    assert export_record["event"] == "export" and export_record["actor"] == "operator:alice"
    with zipfile.ZipFile(out) as package:
        assert sorted(package.namelist()) == ["chain_proof.json", "evidence.json", "item.json", "object.png"]
        assert package.read("object.png") == PNG
        item = json.loads(package.read("item.json"))
        records = json.loads(package.read("evidence.json"))
        proof = json.loads(package.read("chain_proof.json"))
    assert item["id"] == item_id and item["report_ref"] == "NCMEC-7"
    assert [r["event"] for r in records] == ["quarantine", "reported", "export"]
    assert proof["record"] == records[0]
    assert evidence.verify_proof(proof) == ""
    assert proof["head_hash"] == export_record["record_hash"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


async def test_export_refuses_purged_bytes_unless_record_only(quarantine: Quarantine, tmp_path: Path) -> None:
    item_id = await quarantine.record(catch_for(PNG), body=PNG)
    await quarantine.purge(item_id, actor="operator", force=True)
    out = tmp_path / "package.zip"
    with pytest.raises(QuarantineError, match="were purged; use --record-only"):
        await export_item(quarantine, item_id, out, actor="operator")
    assert not out.exists()
    await export_item(quarantine, item_id, out, actor="operator", record_only=True)
    with zipfile.ZipFile(out) as package:
        assert sorted(package.namelist()) == ["chain_proof.json", "evidence.json", "item.json"]
    rejected = await quarantine.record(catch_for(PNG, "reject"))
    with pytest.raises(QuarantineError, match=r"never kept \(reject\)"):
        await export_item(quarantine, rejected, out, actor="operator")


# -- CLI ----------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, database_url: str) -> Path:
    config = tmp_path / "bucketguard.toml"
    config.write_text(textwrap.dedent(f"""
        [[clients]]
        access_key = "AKPICTRS"
        secret_key = "secret"

        [database]
        url = "{database_url}"

        [quarantine]
        path = "{tmp_path / 'quarantine'}"
        retention_days = 30
    """), encoding="utf-8")
    return config


def seed(tmp_path: Path, database_url: str, catches: list[tuple[Catch, bytes | None]]) -> list[str]:
    async def run() -> list[str]:
        database = Database(database_url)
        await database.migrate()
        quarantine = Quarantine(database.engine, LocalStore(tmp_path / "quarantine"))
        ids = [await quarantine.record(catch, body=body) for catch, body in catches]
        await database.close()
        return ids

    return asyncio.run(run())


def test_cli_list_show_hold_purge_export(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich's table width when output is not a terminal
    config = write_config(tmp_path, database_url)
    kept, flagged = seed(tmp_path, database_url, [(catch_for(PNG), PNG), (catch_for(b"gif", "flag"), None)])
    base = ["--config", str(config)]

    assert cli_main(["quarantine", "list", "--json", *base]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["id"] for i in listed] == [kept, flagged]
    assert cli_main(["quarantine", "list", "--status", "flagged", "--json", *base]) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)] == [flagged]
    assert cli_main(["quarantine", "list", *base]) == 0
    table = capsys.readouterr().out
    assert kept in table and "nsfw-high" in table and "quarantined" in table

    assert cli_main(["quarantine", "hold", kept, "--reason", "case 9", "--actor", "admin:alice", *base]) == 0
    assert cli_main(["quarantine", "reported", kept, "--ref", "NCMEC-1", *base]) == 0
    assert "reported (NCMEC-1)" in capsys.readouterr().out
    assert cli_main(["quarantine", "show", kept, "--json", *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["legal_hold"] and shown["report_ref"] == "NCMEC-1"
    assert [r["event"] for r in shown["evidence"]] == ["quarantine", "hold", "reported"]
    assert shown["evidence"][1]["actor"] == "admin:alice"

    assert cli_main(["quarantine", "purge", kept, "--force", *base]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "legal hold (case 9)" in err
    assert cli_main(["quarantine", "unhold", kept, *base]) == 0
    assert cli_main(["quarantine", "purge", kept, *base]) == 1
    assert "use --force" in capsys.readouterr().err
    assert cli_main(["quarantine", "purge", "--expired", "--dry-run", *base]) == 0
    assert capsys.readouterr().out.strip().endswith("would purge 0 item(s)")

    out = tmp_path / "export.zip"
    assert cli_main(["quarantine", "export", kept, "--out", str(out), *base]) == 0
    with zipfile.ZipFile(out) as package:
        assert package.read("object.png") == PNG
    assert cli_main(["quarantine", "purge", kept, "--force", *base]) == 0
    assert "before its retention ended (--force)" in capsys.readouterr().out
    assert cli_main(["quarantine", "export", kept, "--out", str(out), *base]) == 1
    assert "were purged; use --record-only" in capsys.readouterr().err
    assert cli_main(["evidence", "verify", *base]) == 0
    # quarantine, flag, hold, reported, unhold, export, purge; refused requests leave no record.
    assert "intact: 7 record(s)" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, database_url)
    seed(tmp_path, database_url, [])
    base = ["--config", str(config)]
    assert cli_main(["quarantine", "show", "0" * 32, *base]) == 1
    err = capsys.readouterr().err
    assert err == f"bucketguard: no quarantine item {'0' * 32!r}\n"
    assert cli_main(["quarantine", "purge", "--expired", "--force", *base]) == 2
    assert "--force applies to one item" in capsys.readouterr().err
    assert cli_main(["quarantine", "export", "0" * 32, "--out", str(tmp_path / "no" / "x.zip"), *base]) == 1
    assert capsys.readouterr().err.count("\n") == 1


async def test_reading_bytes_is_recorded_as_a_reveal(quarantine: Quarantine, db: Database) -> None:
    item_id = await quarantine.record(catch_for(PNG), body=PNG)
    assert await read_all(await quarantine.read_bytes(item_id, actor="admin:alice", reason="review")) == PNG
    records = await evidence.records_for_item(db.engine, item_id)
    assert [(r["event"], r["actor"], r["detail"]) for r in records[1:]] == [
        ("reveal", "admin:alice", {"reason": "review"})]
    confirmed = await quarantine.record_event(item_id, "confirm", actor="admin:alice", status="confirmed",
                                              reviewed_by="admin:alice", reviewed_at=records[1]["time"])
    assert confirmed["event"] == "confirm"
    assert (await quarantine.get(item_id))["status"] == "confirmed"
    with pytest.raises(QuarantineError, match="unknown item status"):
        await quarantine.record_event(item_id, "confirm", actor="admin:alice", status="gone")
    assert (await evidence.verify(db.engine)) == evidence.VerifyResult(count=3)
