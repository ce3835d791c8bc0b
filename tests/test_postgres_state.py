"""Every database-backed part, run once on SQLite and once on a real PostgreSQL (tests/support/postgres.py).

State and migrations, multipart, the evidence chain and quarantine items, pending scans, the pull-mode
queue, backfill checkpoints and the verdict cache: the same calls, the same answers on both engines,
including under concurrency from two engines on one database (two replicas).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from proxy.evidence import log as evidence
from proxy.evidence.quarantine import Catch, Quarantine
from proxy.evidence.store import LocalStore
from proxy.front.multipart import MultipartState
from proxy.jobs.backfill import ScanOptions, ScanRun
from proxy.jobs.pending import PendingScans
from proxy.jobs.pull import JobQueue
from proxy.screening.cache import CachedScan, VerdictCache
from proxy.screening.facts import Decision
from proxy.screening.upload import Upload
from proxy.state import MIGRATION_MODULES, Database, schema_migrations
from proxy.storage.spool import SpooledBody
from tests.support.postgres import PostgresServer


async def _open(url: str) -> Database:
    db = Database(url)
    await db.migrate()
    return db


async def test_migrations_apply_once_and_again_change_nothing(database_url: str) -> None:
    import importlib

    first, second = Database(database_url), Database(database_url)
    try:
        applied = await asyncio.gather(first.migrate(), second.migrate())
        every = [m.id for name in MIGRATION_MODULES for m in importlib.import_module(name).MIGRATIONS]
        assert sorted(applied[0] + applied[1]) == sorted(every)
        assert await first.migrate() == []
        async with first.engine.connect() as conn:
            ids = (await conn.execute(select(schema_migrations.c.id))).scalars().all()
        assert sorted(ids) == sorted(every)
    finally:
        await first.close()
        await second.close()


def test_four_processes_starting_at_once_migrate_once(database_url: str) -> None:
    script = ("import asyncio, sys\nfrom proxy.state import Database\n"
              "async def main():\n    db = Database(sys.argv[1])\n    print(len(await db.migrate()))\n"
              "    await db.close()\nasyncio.run(main())\n")
    processes = [subprocess.Popen([sys.executable, "-c", script, database_url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    counts = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        counts.append(int(out.strip()))
    assert sorted(counts)[:3] == [0, 0, 0] and counts.count(0) == 3 and max(counts) > 0


async def test_multipart_parts_and_one_completer_across_two_engines(database_url: str) -> None:
    one, two = await _open(database_url), Database(database_url)
    try:
        a, b = MultipartState(one), MultipartState(two)
        await a.create(upload_id="u1", upstream_upload_id="up-1", bucket="pictrs", real_bucket="real", key="k",
                       staging_key=".bucketguard/staging/k", access_key="pictrs-key", content_type="image/png",
                       metadata={"x": "y"})
        # the same part from both replicas at once, then a bigger-than-4-GiB total
        await asyncio.gather(*(m.record_part("u1", 1, 5 << 20, f"e{i}", "0" * 32)
                               for i, m in enumerate((a, b, a, b))))
        await b.record_part("u1", 2, 5 << 30, "big", "1" * 32)
        parts = await a.parts("u1")
        assert sorted(parts) == [1, 2] and parts[2].size == 5 << 30
        assert await b.total_size("u1") == (5 << 20) + (5 << 30)
        upload = await b.get("u1")
        assert upload is not None and upload.metadata == {"x": "y"}
        wins = await asyncio.gather(*(m.mark_completing("u1") for m in (a, b, a, b)))
        assert wins.count(True) == 1
        assert not await a.mark_aborted("u1")
        assert await b.mark_done("u1")
    finally:
        await one.close()
        await two.close()


async def test_evidence_chain_from_two_engines_stays_one_verifiable_chain(database_url: str,
                                                                          tmp_path: Path) -> None:
    one, two = await _open(database_url), Database(database_url)
    try:
        stores = LocalStore(tmp_path / "q")
        quarantines = [Quarantine(one.engine, stores), Quarantine(two.engine, stores)]
        data = b"\x89PNG evidence bytes"
        body = SpooledBody.from_bytes(data)
        catches = [Catch(action="quarantine" if i % 2 else "reject", bucket="pictrs", key=f"k{i}",
                         access_key="pictrs-key", content_type="image/png", size=body.size, sha256=body.sha256,
                         md5=body.md5, signals={"nsfw": 0.5 + i / 100}, rule="r") for i in range(20)]
        ids = await asyncio.gather(*(quarantines[i % 2].record(c, body=data if c.action == "quarantine" else None)
                                     for i, c in enumerate(catches)))
        assert len(set(ids)) == 20
        result = await evidence.verify(two.engine)
        assert result.ok and result.count == 20, result
        items = await quarantines[0].list()
        assert len(items) == 20 and {i["key"] for i in items} == {f"k{i}" for i in range(20)}
        # a large object's size fits (over 2 GiB)
        big = Catch(action="reject", bucket="pictrs", key="huge.mp4", access_key="pictrs-key",
                    content_type="video/mp4", size=3 << 30, sha256="a" * 64, md5="b" * 32)
        item_id = await quarantines[1].record(big)
        assert (await quarantines[0].get(item_id))["size"] == 3 << 30
        assert (await evidence.verify(one.engine)).ok
    finally:
        await one.close()
        await two.close()


async def test_pending_scans_are_claimed_by_one_replica_each(database_url: str) -> None:
    one, two = await _open(database_url), Database(database_url)
    try:
        a, b = PendingScans(one), PendingScans(two)
        for i in range(6):
            body = SpooledBody.from_bytes(f"object {i}".encode())
            upload = Upload("pictrs", "real", f"k{i}", "pictrs-key", "image/png", body)
            await a.enqueue(upload, Decision(action="allow", reason="detectors unavailable", pending=True))
            await b.confirm(upload)  # landed: due now
        assert await b.count() == 6
        claims = await asyncio.gather(*(q.claim() for q in (a, b) * 8))
        rows = [c for c in claims if c is not None]
        assert len(rows) == len({r.id for r in rows})  # nobody got a row twice
        for row in rows:
            await (a if row.id % 2 else b).finish(row.id, "clean")
        while (row := await b.claim()) is not None:
            await a.finish(row.id, "clean")
        assert await a.count() == 0
        assert [r["outcome"] for r in await b.outcomes()] == ["clean"] * 6
    finally:
        await one.close()
        await two.close()


async def test_pull_queue_leases_once_and_accepts_one_result(database_url: str) -> None:
    one, two = await _open(database_url), Database(database_url)
    try:
        a, b = JobQueue(one), JobQueue(two)
        ids = [await a.submit(f"image {i}".encode(), "image/png", f"{i:064x}") for i in range(5)]
        leases = await asyncio.gather(a.lease("w1", 5), b.lease("w2", 5))
        leased = [j["id"] for batch in leases for j in batch]
        assert sorted(leased) == sorted(ids)
        owner = {j["id"]: w for w, batch in zip(("w1", "w2"), leases, strict=True) for j in batch}
        token = {j["id"]: j["lease"] for batch in leases for j in batch}
        first = ids[0]
        assert await b.body(first, owner[first], token[first]) == b"image 0"
        assert await b.body(first, "intruder", token[first]) is None
        results = await asyncio.gather(a.complete(first, owner[first], token[first], {"signals": {"x": 1.0}}),
                                       b.complete(first, "w3", token[first], {"signals": {"x": 0.0}}))
        assert results.count(True) == 1
        assert (await b.result_for(job_id=first))["signals"]["x"] in (1.0, 0.0)
    finally:
        await one.close()
        await two.close()


async def test_backfill_checkpoints_survive_reopening(database_url: str) -> None:
    db = await _open(database_url)
    try:
        options = ScanOptions("pictrs", "real")
        run = ScanRun(db, options)
        assert await run.open() is False
        page = [{"Key": f"k{i}", "Size": 3 << 30 if i == 0 else i, "ETag": f'"e{i}"'} for i in range(10)]
        await run.add_page(page[:5], "token-1", False)
        await run.add_page(page[:5], "token-1", False)  # the same page again after a crash: no duplicates
        again = ScanRun(db, options)
        assert await again.open() is True and again.run_id == run.run_id
        assert await again.listing_state() == ("token-1", False)
        await again.add_page(page[5:], "", True)
        assert len(await again.pending(100)) == 10
        await again.set_outcome("k1", "clean", sha256="c" * 64)
        report = await again.report()
        assert report["objects"] == 10 and report["outcomes"] == {"clean": 1, "pending": 9}
        assert report["bytes"] == (3 << 30) + sum(range(1, 10))
    finally:
        await db.close()


async def test_verdict_cache_and_allow_list(database_url: str) -> None:
    one, two = await _open(database_url), Database(database_url)
    try:
        a, b = VerdictCache(one), VerdictCache(two)
        sha = "d" * 64
        assert await a.lookup(sha) == (False, None)
        scan = CachedScan({"nsfw-age": "1"}, {"nsfw": 0.25}, None, False, True)
        await asyncio.gather(a.put(sha, scan), b.put(sha, scan), a.put(sha, scan))
        allowed, cached = await b.lookup(sha)
        assert not allowed and cached == scan
        await asyncio.gather(a.allow(sha, reason="released", added_by="admin"),
                             b.allow(sha, reason="released", added_by="admin"))
        assert (await a.lookup(sha))[0] is True
    finally:
        await one.close()
        await two.close()


def test_postgres_server_is_real(postgres_server: PostgresServer) -> None:
    """Guard: the PostgreSQL lane really talks to a PostgreSQL server, not something else."""
    assert postgres_server.psql("SHOW server_version_num").strip().isdigit()
    assert "PostgreSQL" in postgres_server.psql("SELECT version()")


@pytest.mark.parametrize("size", [(1 << 31) - 1, 1 << 31])
async def test_sizes_over_two_gib_fit_every_size_column(postgres_url: str, size: int) -> None:
    db = await _open(postgres_url)
    try:
        await evidence.append_one(db.engine, evidence.Event(event="reject", item_id="i", actor="t", size=size))
        assert (await evidence.verify(db.engine)).ok
    finally:
        await db.close()


async def test_scan_leases_take_at_most_the_batch_and_never_the_same_object(database_url: str) -> None:
    one, two = await _open(database_url), Database(database_url)
    try:
        scanners = [ScanRun(one, ScanOptions("pictrs", "real"), owner=f"elsewhere/{n}/x") for n in (1, 2)]
        scanners += [ScanRun(two, ScanOptions("pictrs", "real"), owner=f"elsewhere/{n}/x") for n in (3, 4)]
        joined = await asyncio.gather(*(s.open() for s in scanners))
        assert joined.count(False) == 1 and len({s.run_id for s in scanners}) == 1  # one run, joined by three
        assert await scanners[0].take_listing() == ("", False)
        assert await scanners[1].take_listing() is None  # the listing is leased to the first
        assert not await scanners[1].add_page([{"Key": "x", "Size": 1, "ETag": "e"}], "t", True, after="")
        await scanners[0].add_page([{"Key": f"k{i:03d}", "Size": 1, "ETag": "e"} for i in range(100)], "", True,
                                   after="")
        batches = await asyncio.gather(*(s.claim(7) for s in scanners * 3))
        assert all(len(b) <= 7 for b in batches)
        taken = [row["key"] for batch in batches for row in batch]
        assert len(taken) == len(set(taken)) == sum(len(b) for b in batches) and len(taken) >= 7
        first = batches[0]
        # an outcome is written only by the scanner holding the object
        await scanners[1].write_outcomes([{"key": first[0]["key"], "outcome": "clean"}])
        await scanners[0].write_outcomes([{"key": r["key"], "outcome": "flagged"} for r in first])
        report = await scanners[2].report()
        assert report["outcomes"]["flagged"] == len(first) and "clean" not in report["outcomes"]
        assert report["scanners"] == {scanners[0].owner: len(first)}
    finally:
        await one.close()
        await two.close()


async def test_a_later_run_knows_what_an_earlier_one_decided(database_url: str) -> None:
    db = await _open(database_url)
    try:
        first = ScanRun(db, ScanOptions("pictrs", "real"))
        await first.open()
        page = [{"Key": f"k{i}", "Size": 10 + i, "ETag": f'"e{i}"'} for i in range(3)]
        await first.add_page(page, "", True)
        await first.write_outcomes([{"key": "k0", "outcome": "clean"}, {"key": "k1", "outcome": "quarantined"},
                                    {"key": "k2", "outcome": "clean"}])
        assert await first.finish()
        second = ScanRun(db, ScanOptions("pictrs", "real"))
        assert await second.open() is False and second.run_id != first.run_id  # a finished run is not joined
        changed = [*page[:2], {"Key": "k2", "Size": 99, "ETag": '"other"'}]  # k2 was replaced since
        await second.add_page(changed, "", True)
        rows = await second.claim(10)
        assert await second.decided_earlier(rows) == {"k0"}  # quarantined ones and changed bytes are scanned
        assert await second.decided_before("k0", "e0", 10) and not await second.decided_before("k2", "other", 99)
    finally:
        await db.close()
