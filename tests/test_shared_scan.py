"""Two `bucketguard scan` processes share one scan of one bucket through the database; one is killed with -9
and started again. Every object ends with exactly one outcome, decided by one scanner; every object is read
from the bucket once, except the few the killed scanner held when it died; each hit is quarantined once.

The bucket is moto's server behind the suite's counting balancer (tests/support/balancer.py), so the reads
are counted as the S3 server sees them; the database is SQLite and a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import skimage.data
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from proxy.evidence import log as evidence
from proxy.evidence.quarantine import quarantine_items
from proxy.jobs.scan_run import scan_objects, scan_runs
from proxy.screening.testimage import generate_png
from proxy.state import Database
from tests.support.balancer import start_balancer
from tests.support.moto import S3Server
from tests.support.postgres import run_sql
from tests.support.proxy import CLIENT_BUCKET, new_bucket, write_config

OBJECTS = 160
HIT_EVERY = 20


def corpus() -> dict[str, bytes]:
    base = Image.fromarray(skimage.data.astronaut()).convert("RGB").resize((64, 48))
    test = Image.open(io.BytesIO(generate_png())).convert("RGB")
    objects: dict[str, bytes] = {}
    for index in range(OBJECTS):
        buffer = io.BytesIO()
        if index % HIT_EVERY == 0:
            test.resize((400 - index % 37, 300 - index % 29)).save(buffer, "WEBP", quality=70)
            objects[f"{index:04d}-t.webp"] = buffer.getvalue()
        else:
            image = base.copy()
            image.putpixel((index % 64, index // 64 % 48), (index % 256, 7, 7))
            image.save(buffer, "JPEG", quality=60 + index % 30)
            objects[f"{index:04d}.jpg"] = buffer.getvalue()
    return objects


def start_scan(config: Path, report: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "proxy.cli", "scan", "--config", str(config), "--bucket",
                             CLIENT_BUCKET, "--no-progress", "--concurrency", "4", "--lease", "300",
                             "--rate", "6",  # slow enough that a scanner started later still finds work
                             "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def owner_of(process: subprocess.Popen, owners: set[str]) -> str:
    mine = [o for o in owners if o.split("/")[1] == str(process.pid)]
    assert len(mine) == 1, (process.pid, owners)
    return mine[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_scanners_one_killed_and_restarted_scan_every_object_once(
        database_url: str, moto_server: S3Server, test_pack_path: Path, tmp_path: Path) -> None:
    objects = corpus()
    bucket = new_bucket(moto_server)
    client = moto_server.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))
    balancer = start_balancer([moto_server.endpoint])
    try:
        policy = tmp_path / "policy.toml"
        policy.write_text('on_undecodable = "reject"\non_non_media = "flag"\n')
        config = write_config(tmp_path, S3Server(balancer.endpoint), bucket,
                              inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]',
                              screening=f'policy = "{policy}"')
        config.write_text(re.sub(r'(?m)^url = "sqlite\+aiosqlite:///.*"$', f'url = "{database_url}"',
                                 config.read_text()))
        # the second starts once the first is working, so that both surely share the run under any load
        first, second = start_scan(config, tmp_path / "a.json"), None
        deadline = time.monotonic() + 300
        decided_by_first = decided_by_second = 0
        while time.monotonic() < deadline and first.poll() is None:
            try:
                rows = run_sql(database_url, select(scan_objects.c.decided_by, func.count()).where(
                    scan_objects.c.outcome != "pending").group_by(scan_objects.c.decided_by))
            except DBAPIError:  # the scanners have not created the tables yet
                rows = []
            by = dict(rows)
            decided_by_first = sum(n for o, n in by.items() if o.split("/")[1] == str(first.pid))
            if second is None and decided_by_first:
                second = start_scan(config, tmp_path / "b.json")
            decided_by_second = sum(n for o, n in by.items() if second and o.split("/")[1] == str(second.pid))
            if decided_by_second and sum(by.values()) >= OBJECTS // 5:
                break
            time.sleep(0.1)
        assert first.poll() is None and decided_by_first, (by, first.pid, (first.poll() is None
                                                           and "") or first.communicate()[0])
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        owners = {o for (o,) in run_sql(database_url, select(scan_objects.c.owner).distinct()) if o}
        killed = owner_of(first, owners)
        held = {k for (k,) in run_sql(database_url, select(scan_objects.c.key).where(
            scan_objects.c.owner == killed, scan_objects.c.outcome == "pending"))}
        assert held, run_sql(database_url, select(scan_objects.c.owner, scan_objects.c.outcome, func.count())
                         .group_by(scan_objects.c.owner, scan_objects.c.outcome))
        restarted = start_scan(config, tmp_path / "c.json")
        for process in (second, restarted):
            try:
                out, _ = process.communicate(timeout=float(os.environ.get("BG_SCAN_WAIT", "400")))
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
                state = run_sql(database_url, select(scan_objects.c.owner, scan_objects.c.outcome, func.count())
                            .group_by(scan_objects.c.owner, scan_objects.c.outcome))
                raise AssertionError(f"scanner {process.pid} did not finish: {out}\n{state}\n"
                                     f"{run_sql(database_url, select(scan_runs))}\nkilled={killed}\n"
                                     f"in flight at the balancer: {balancer.app.in_flight}") from None
            assert process.returncode == 0, out
    finally:
        balancer.stop()

    rows = run_sql(database_url, select(scan_objects.c.key, scan_objects.c.outcome, scan_objects.c.decided_by))
    assert sorted(k for k, _, _ in rows) == sorted(objects), "every object listed once, in one run"
    outcomes = {k: o for k, o, _ in rows}
    hits = {k for k in objects if k.endswith("-t.webp")}
    assert {k for k, o in outcomes.items() if o == "quarantined"} == hits
    assert {o for k, o in outcomes.items() if k not in hits} == {"clean"}
    deciders = Counter(d for _, _, d in rows)
    # the killed and the second scanner both decided objects; the restarted one takes what is left, if any
    assert killed in deciders and owner_of(second, set(deciders)) in deciders, deciders
    assert len(run_sql(database_url, select(scan_runs.c.id))) == 1
    assert run_sql(database_url, select(scan_runs.c.finished_at))[0][0] != ""

    reads = Counter(entry.path.split("/", 2)[2] for entry in balancer.app.log
                    if entry.method == "GET" and entry.path.startswith(f"/{bucket}/") and entry.status == 200)
    assert set(reads) == set(objects)
    twice = {k for k, n in reads.items() if n > 1}
    assert twice <= held and max(reads.values()) <= 2, (twice - held, max(reads.values()))

    assert set(moto_server.keys(bucket)) == set(objects) - hits
    recorded = Counter(k for (k,) in run_sql(database_url, select(quarantine_items.c.key).where(
        quarantine_items.c.action == "quarantine")))
    assert set(recorded) == hits and set(recorded.values()) == {1}

    async def chain_ok() -> bool:
        db = Database(database_url)
        try:
            return (await evidence.verify(db.engine)).ok
        finally:
            await db.close()

    assert asyncio.run(chain_ok())
    final = [json.loads((tmp_path / name).read_text()) for name in ("b.json", "c.json")]
    for report in final:
        assert report["objects"] == OBJECTS and report["outcomes"].get("pending", 0) == 0
        assert report["outcomes"]["quarantined"] == len(hits)
    assert final[1]["resumed"] is True
