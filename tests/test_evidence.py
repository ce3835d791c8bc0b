"""The evidence log: canonical hashing, append, verify (tampering, gaps), concurrency, chain proofs, CLI."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from proxy.cli import main as cli_main
from proxy.evidence import log as evidence
from proxy.evidence.log import GENESIS_HASH, Event
from proxy.state import Database
from tests.support.postgres import PG_PASSWORD, PostgresServer

REPO = Path(__file__).resolve().parent.parent


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def make_event(n: int, **overrides: object) -> Event:
    fields: dict[str, object] = dict(
        event="quarantine", item_id=f"{n:032x}", actor="AKCLIENT", access_key="AKCLIENT",
        bucket="pict-rs", key=f"files/{n}.png", size=1000 + n, content_type="image/png",
        sha256="ab" * 32, md5="cd" * 16, pdq="ef" * 32, signals={"nsfw": 0.1 * n, "p_minor": 0.25},
        rule="csam-hash", category="test", action="quarantine", pack_versions={"nsfw-small": "1.0"},
        policy_version="p-7",
    )
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def write_config(tmp_path: Path, database_url: str) -> Path:
    config = tmp_path / "bucketguard.toml"
    config.write_text(textwrap.dedent(f"""
        [[clients]]
        access_key = "AKCLIENT"
        secret_key = "secret"

        [database]
        url = "{database_url}"

        [quarantine]
        path = "{tmp_path / 'quarantine'}"
    """), encoding="utf-8")
    return config


def test_canonical_form_is_exactly_as_documented() -> None:
    record = {
        "seq": 1, "time": "2025-01-02T03:04:05.000006Z", "event": "flag", "item_id": "i", "access_key": "a",
        "bucket": "b", "key": "ключ/ü.png", "size": 7, "content_type": "image/png", "sha256": "s",
        "md5": "m", "pdq": "", "signals": {"z": 0.1, "a": 1e-20, "m": 3}, "rule": "r", "category": "c",
        "action": "flag", "pack_versions": {}, "policy_version": "v", "actor": "op", "detail": {},
        "prev_hash": GENESIS_HASH,
    }
    expected_text = (
        '{"access_key":"a","action":"flag","actor":"op","bucket":"b","category":"c",'
        '"content_type":"image/png","detail":{},"event":"flag","item_id":"i","key":"ключ/ü.png",'
        '"md5":"m","pack_versions":{},"pdq":"","policy_version":"v","prev_hash":"' + GENESIS_HASH + '",'
        '"rule":"r","seq":1,"sha256":"s","signals":{"a":1e-20,"m":3,"z":0.1},"size":7,'
        '"time":"2025-01-02T03:04:05.000006Z"}'
    )
    assert evidence.record_hash(record) == hashlib.sha256(expected_text.encode("utf-8")).hexdigest()
    # The stored form keeps JSON fields as text; it hashes the same.
    stored = dict(record, signals=json.dumps(record["signals"]), pack_versions="{}", detail="{}")
    assert evidence.record_hash(stored) == evidence.record_hash(record)


async def test_append_links_records_and_verify_counts_them(db: Database) -> None:
    first = await evidence.append_one(db.engine, make_event(1))
    second = await evidence.append_one(db.engine, make_event(2, event="hold", detail={"reason": "case 1"}))
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["prev_hash"] == GENESIS_HASH
    assert second["prev_hash"] == first["record_hash"]
    assert second["detail"] == {"reason": "case 1"}
    assert await evidence.verify(db.engine) == evidence.VerifyResult(count=2)


async def test_empty_log_verifies(db: Database) -> None:
    assert await evidence.verify(db.engine) == evidence.VerifyResult(count=0)


async def test_bad_events_are_refused_and_leave_no_record(db: Database) -> None:
    with pytest.raises(evidence.EvidenceError, match="unknown evidence event"):
        await evidence.append_one(db.engine, make_event(1, event="delete"))
    with pytest.raises(evidence.EvidenceError, match="non-finite"):
        await evidence.append_one(db.engine, make_event(1, signals={"nsfw": float("nan")}))
    with pytest.raises(evidence.EvidenceError, match="actor"):
        await evidence.append_one(db.engine, make_event(1, actor=""))
    assert await evidence.verify(db.engine) == evidence.VerifyResult(count=0)


async def test_changed_field_is_named(db: Database) -> None:
    for n in range(1, 5):
        await evidence.append_one(db.engine, make_event(n))
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE evidence_records SET key = 'files/other.png' WHERE seq = 3"))
    result = await evidence.verify(db.engine)
    assert (result.broken_seq, result.count) == (3, 2)
    assert result.problem.startswith("content changed")


async def test_changed_signal_float_is_named(db: Database) -> None:
    for n in range(1, 3):
        await evidence.append_one(db.engine, make_event(n))
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE evidence_records SET signals = :s WHERE seq = 1"),
                           {"s": '{"nsfw":0.0,"p_minor":0.25}'})
    result = await evidence.verify(db.engine)
    assert result.broken_seq == 1 and result.problem.startswith("content changed")


async def test_rewritten_record_with_recomputed_hash_breaks_the_next_link(db: Database) -> None:
    for n in range(1, 4):
        await evidence.append_one(db.engine, make_event(n))
    async with db.engine.begin() as conn:
        row = (await conn.execute(text("SELECT * FROM evidence_records WHERE seq = 2"))).mappings().one()
        forged = dict(row, size=1)
        await conn.execute(text("UPDATE evidence_records SET size = 1, record_hash = :h WHERE seq = 2"),
                           {"h": evidence.record_hash(forged)})
    result = await evidence.verify(db.engine)
    assert result.broken_seq == 3
    assert result.problem.startswith("prev_hash mismatch")


async def test_deleted_record_is_named_as_a_gap(db: Database) -> None:
    for n in range(1, 5):
        await evidence.append_one(db.engine, make_event(n))
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM evidence_records WHERE seq = 2"))
    result = await evidence.verify(db.engine)
    assert result.broken_seq == 2
    assert result.problem == "missing sequence: record 2 is missing"


async def test_records_cut_from_the_end_are_noticed(db: Database) -> None:
    for n in range(1, 5):
        await evidence.append_one(db.engine, make_event(n))
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM evidence_records WHERE seq >= 3"))
    result = await evidence.verify(db.engine)
    assert result.broken_seq == 3
    assert result.problem.startswith("missing sequence: records 3 to 4 are missing")


async def test_two_engines_on_one_database_keep_one_chain(database_url: str, db: Database) -> None:
    other = Database(database_url)
    try:
        async def writer(database: Database, start: int) -> None:
            for n in range(start, start + 15):
                await evidence.append_one(database.engine, make_event(n))

        await asyncio.gather(writer(db, 0), writer(other, 100))
    finally:
        await other.close()
    assert await evidence.verify(db.engine) == evidence.VerifyResult(count=30)


_APPEND_SCRIPT = """
import asyncio, sys
from sqlalchemy import text
from proxy.evidence import log as evidence
from proxy.state import Database

async def count(db, actor):
    async with db.engine.connect() as conn:
        return (await conn.execute(
            text("SELECT count(*) FROM evidence_records WHERE actor = :a"), {"a": actor})).scalar_one()

async def main(url, tag, other):
    db = Database(url)
    await evidence.verify(db.engine)  # connected and warm
    print("ready", flush=True)
    sys.stdin.readline()  # both start appending at once
    for n in range(150):
        await evidence.append_one(db.engine, evidence.Event(event="flag", item_id=f"{tag}-{n}", actor=tag))
        if n % 25 == 24:
            # A rendezvous every 25 records: without it one process can finish before the other starts, and the
            # chain would never see two writers at once. Between rendezvous both append concurrently.
            deadline = asyncio.get_running_loop().time() + 30
            while await count(db, other) < n + 1 - 25 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
    await db.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


async def test_two_processes_appending_keep_one_unbroken_chain(database_url: str, db: Database) -> None:
    url = database_url
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _APPEND_SCRIPT, url, tag, other, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for tag, other in (("replica-a", "replica-b"), ("replica-b", "replica-a"))]
    for proc in procs:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), timeout=60) == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    for proc in procs:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, stderr.decode()
    assert await evidence.verify(db.engine) == evidence.VerifyResult(count=300)
    async with db.engine.connect() as conn:
        actors = [r[0] for r in await conn.execute(text("SELECT actor FROM evidence_records ORDER BY seq"))]
    assert sorted(set(actors)) == ["replica-a", "replica-b"]
    switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
    assert switches > 1, "the two writers never interleaved, so the test proved nothing"


async def test_chain_proof_verifies_and_catches_tampering(db: Database) -> None:
    for n in range(1, 6):
        await evidence.append_one(db.engine, make_event(n))
    proof = await evidence.chain_proof(db.engine, 2)
    assert proof["record"]["seq"] == 2
    assert [r["seq"] for r in proof["following"]] == [3, 4, 5]
    assert proof["head_seq"] == 5
    proof = json.loads(json.dumps(proof))  # as a reader of the exported file sees it
    assert evidence.verify_proof(proof) == ""
    proof["record"]["bucket"] = "elsewhere"
    assert evidence.verify_proof(proof) == "record 2: content changed"
    with pytest.raises(evidence.EvidenceError, match="no evidence record 9"):
        await evidence.chain_proof(db.engine, 9)


def test_cli_verify_reports_count_then_names_the_broken_record(tmp_path: Path, database_url: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, database_url)

    async def populate() -> None:
        database = Database(database_url)
        await database.migrate()
        for n in range(1, 4):
            await evidence.append_one(database.engine, make_event(n))
        await database.close()

    asyncio.run(populate())
    assert cli_main(["evidence", "verify", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "evidence chain intact: 3 record(s)"

    proof_path = tmp_path / "p.json"
    assert cli_main(["evidence", "proof", "2", "--config", str(config), "--out", str(proof_path)]) == 0
    assert evidence.verify_proof(json.loads(proof_path.read_text(encoding="utf-8"))) == ""

    async def tamper() -> None:
        database = Database(database_url)
        async with database.engine.begin() as conn:
            await conn.execute(text("UPDATE evidence_records SET actor = 'someone else' WHERE seq = 2"))
        await database.close()

    asyncio.run(tamper())
    capsys.readouterr()
    assert cli_main(["evidence", "verify", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("bucketguard: evidence chain broken at record 2: content changed")


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite only by nature: a missing database file is named, and not created by `evidence verify`."""
    assert cli_main(["evidence", "verify", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    config = write_config(tmp_path, sqlite_url(tmp_path / "absent.db"))
    assert cli_main(["evidence", "verify", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent.db does not exist" in err
    assert not (tmp_path / "absent.db").exists()


def test_cli_names_a_postgresql_it_cannot_open_in_one_line(tmp_path: Path, postgres_server: PostgresServer,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL only by nature: no such database, a refused password, no server; never the password."""
    absent = postgres_server.url("no_such_database")
    refused = postgres_server.url(postgres_server.create_database()).replace(PG_PASSWORD, "wrong-password")
    for url, reason in ((absent, 'database "no_such_database" does not exist'),
                        (refused, "password authentication failed"),
                        ("postgresql+asyncpg://bucketguard:s3cret@127.0.0.1:1/bucketguard", "127.0.0.1")):
        config = write_config(tmp_path, url)
        assert cli_main(["evidence", "verify", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("bucketguard: cannot open the database postgresql"), err
        assert reason in err and PG_PASSWORD not in err and "wrong-password" not in err and "s3cret" not in err
