"""Pull mode with real processes: `bucketguard serve` in pull mode, `bucketguard inference worker` processes
that connect out to it, uploads that wait for their verdicts, a worker killed mid-job.

The job queue lives in the state database: each test runs on SQLite and on a real PostgreSQL (`database_url`).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from proxy.jobs.pull import inference_jobs
from proxy.state import Database
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, new_bucket, start_subprocess, write_config

TOKENS = {"alpha": "alpha-token-123", "beta": "beta-token-456"}


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).resize((120, 80)).save(buffer, "PNG")
    return buffer.getvalue()


def start_worker(name: str, endpoint: str, pack: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "proxy.cli", "inference", "worker", "--proxy", endpoint,
                             "--token", TOKENS[name], "--pack", str(pack), "--provider", "cpu", "--batch", "4",
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def jobs(database_url: str) -> list[tuple]:
    """The queue's rows as the proxy left them, read from its database directly."""
    async def read() -> list[tuple]:
        db = Database(database_url)
        try:
            async with db.engine.connect() as conn:
                c = inference_jobs.c
                rows = await conn.execute(select(c.id, c.state, c.worker, c.attempts, c.decided_by))
                return [tuple(row) for row in rows]
        finally:
            await db.close()

    return asyncio.run(read())


@pytest.fixture
def pull_proxy(moto_server: S3Server, tmp_path: Path, database_url: str):
    bucket = new_bucket(moto_server)
    policy = tmp_path / "policy.toml"
    policy.write_text('on_unavailable = "refuse"\n[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\n'
                      'action = "flag"\n')
    tokens = "\n".join(f'{name} = "{token}"' for name, token in TOKENS.items())
    config = write_config(tmp_path, moto_server, bucket, server=f"[server.worker_tokens]\n{tokens}",
                          inference='mode = "pull"\nlease_s = 2',
                          screening=f'policy = "{policy}"\nscan_timeout_s = 20')
    proxy = start_subprocess(config, moto_server, bucket, env={"BUCKETGUARD_DATABASE_URL": database_url})
    yield proxy, database_url
    proxy.stop()


def test_two_workers_share_the_load(pull_proxy, test_pack_path: Path) -> None:
    proxy, database = pull_proxy
    workers = [start_worker(name, proxy.endpoint, test_pack_path) for name in TOKENS]
    try:
        s3 = proxy.client()
        errors: list[Exception] = []

        def upload(index: int) -> None:
            try:
                s3.put_object(Bucket=CLIENT_BUCKET, Key=f"img/{index}.png", Body=png(index), ContentType="image/png")
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert len(proxy.upstream_keys("img/")) == 16
        rows = jobs(database)
        assert len(rows) == 16 and {row[1] for row in rows} == {"done"}
        assert {row[4] for row in rows} == {"alpha", "beta"}, "both workers must have decided some jobs"
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(10)


def test_a_killed_workers_job_is_finished_by_another_and_decided_once(pull_proxy, test_pack_path: Path) -> None:
    proxy, database = pull_proxy
    slow = start_worker("alpha", proxy.endpoint, test_pack_path, "--pause-s", "30")
    other = None
    try:
        done = threading.Event()
        outcome: list[object] = []

        def upload() -> None:
            try:
                outcome.append(proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="slow.png", Body=png(99),
                                                         ContentType="image/png"))
            except Exception as exc:
                outcome.append(exc)
            done.set()

        threading.Thread(target=upload).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(r[1] == "leased" and r[2] == "alpha" for r in jobs(database)):
            time.sleep(0.1)
        assert any(row[2] == "alpha" for row in jobs(database)), "alpha should hold the job"
        os.kill(slow.pid, signal.SIGKILL)
        slow.wait(10)
        other = start_worker("beta", proxy.endpoint, test_pack_path)
        assert done.wait(30), "the upload should be decided by the second worker"
        assert not isinstance(outcome[0], Exception), outcome[0]
        (job_id, state, worker, attempts, decided_by), = jobs(database)
        assert (state, worker, decided_by) == ("done", "beta", "beta") and attempts == 2
        # a late second answer for the same job is refused: nothing is decided twice
        late = httpx.post(f"{proxy.endpoint}/_bucketguard/jobs/{job_id}/result",
                          headers={"Authorization": f"Bearer {TOKENS['alpha']}"},
                          json={"signals": {"nsfw": 1.0}, "packs": []})
        assert late.status_code == 409 and late.json() == {"accepted": False}
        assert jobs(database)[0][4] == "beta"
        assert httpx.post(f"{proxy.endpoint}/_bucketguard/jobs/lease", json={}).status_code == 401
    finally:
        for process in (slow, other):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
