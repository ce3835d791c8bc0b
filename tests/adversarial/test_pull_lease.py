"""Pull mode, who may decide (issue 9, who may do what): a worker with a valid token posts results for jobs it
does not hold, never leased, or held once but lost to another worker. Only the worker holding the job's
current lease (its lease token) decides; the others get 409 and change nothing. Real `bucketguard serve` in
pull mode, raw HTTP posts as the attacking worker sends them, a real `bucketguard inference worker`; judged
by the bucket on moto, the job rows and `bucketguard evidence verify`."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, RunningProxy, new_bucket, start_subprocess, write_config

TOKENS = {"alpha": "alpha-token-123", "beta": "beta-token-456"}
CAUGHT = {"signals": {"nsfw": 1.0}, "packs": []}
CLEAN = {"signals": {"nsfw": 0.0}, "packs": []}


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).resize((120, 80)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def pull(moto_server: S3Server, tmp_path: Path):
    bucket = new_bucket(moto_server)
    policy = tmp_path / "policy.toml"
    policy.write_text('on_unavailable = "refuse"\n[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\n'
                      'action = "quarantine"\n')
    tokens = "\n".join(f'{name} = "{token}"' for name, token in TOKENS.items())
    config = write_config(tmp_path, moto_server, bucket, server=f"[server.worker_tokens]\n{tokens}",
                          inference='mode = "pull"\nlease_s = 2',
                          screening=f'policy = "{policy}"\nscan_timeout_s = 25')
    proxy = start_subprocess(config, moto_server, bucket)
    yield proxy, tmp_path / "state.db", config
    proxy.stop()


def as_worker(name: str, lease: str = "") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKENS[name]}"}
    if lease:
        headers["X-Bucketguard-Lease"] = lease
    return headers


def lease(proxy: RunningProxy, name: str) -> dict:
    answer = httpx.post(f"{proxy.endpoint}/_bucketguard/jobs/lease", headers=as_worker(name),
                        json={"max": 1, "wait_s": 10}, timeout=30)
    assert answer.status_code == 200, answer.text
    (job,) = answer.json()["jobs"]
    return job


def post(proxy: RunningProxy, name: str, job_id: str, result: dict, lease_token: str = "") -> httpx.Response:
    return httpx.post(f"{proxy.endpoint}/_bucketguard/jobs/{job_id}/result", headers=as_worker(name, lease_token),
                      json=result, timeout=30)


def upload(proxy: RunningProxy, key: str, data: bytes) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def send() -> None:
        try:
            proxy.client().put_object(Bucket=CLIENT_BUCKET, Key=key, Body=data, ContentType="image/png")
            outcome["landed"] = True
        except Exception as exc:  # asserted by the test
            outcome["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


def job_rows(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT id, state, worker, decided_by FROM inference_jobs ORDER BY created_at").fetchall()


def wait_for_job(database: Path, state: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = [r for r in job_rows(database) if r[1] == state]
        if rows:
            return rows[0][0]
        time.sleep(0.05)
    raise AssertionError(f"no {state} job")


def evidence_verifies(config: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "evidence", "verify", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def refused(outcome: dict) -> bool:
    error = outcome.get("error")
    return error is not None and getattr(error, "response", {}).get("Error", {}).get("Code") == "AccessDenied"


def test_another_workers_job_cannot_be_decided(pull) -> None:
    proxy, database, config = pull
    thread, outcome = upload(proxy, "held.png", png(1))
    job = lease(proxy, "alpha")
    # beta, a valid worker, tries to clear alpha's job: with no lease, a guessed one, alpha's stolen token
    for token in ("", "guessed-token", job["lease"]):
        answer = post(proxy, "beta", job["id"], CLEAN, token)
        assert answer.status_code == 409 and answer.json() == {"accepted": False}
    stolen_body = httpx.get(f"{proxy.endpoint}/_bucketguard/jobs/{job['id']}/body",
                            headers=as_worker("beta", job["lease"]), timeout=30)
    assert stolen_body.status_code == 404
    assert httpx.get(f"{proxy.endpoint}/_bucketguard/jobs/{job['id']}/body", headers=as_worker("alpha"),
                     timeout=30).status_code == 404, "the holder needs its lease token too"
    assert job_rows(database)[0][1:] == ("leased", "alpha", "")
    assert post(proxy, "alpha", job["id"], CAUGHT, job["lease"]).status_code == 200
    thread.join(30)
    assert refused(outcome), outcome
    assert proxy.upstream_keys() == [], "alpha's verdict decided: nothing landed"
    assert job_rows(database)[0][1:] == ("done", "alpha", "alpha")
    evidence_verifies(config)


def test_a_job_never_leased_cannot_be_decided(pull) -> None:
    proxy, database, config = pull
    thread, outcome = upload(proxy, "queued.png", png(2))
    job_id = wait_for_job(database, "queued")
    answer = post(proxy, "beta", job_id, CLEAN, "any-token")
    assert answer.status_code == 409
    assert post(proxy, "beta", job_id, CLEAN).status_code == 409
    assert job_rows(database)[0][1] == "queued", "the job is still waiting for a real lease"
    job = lease(proxy, "alpha")
    assert job["id"] == job_id
    assert post(proxy, "alpha", job_id, CAUGHT, job["lease"]).status_code == 200
    thread.join(30)
    assert refused(outcome) and proxy.upstream_keys() == []
    evidence_verifies(config)


def test_a_lost_lease_cannot_decide_after_another_worker_took_the_job(pull) -> None:
    proxy, database, config = pull
    thread, outcome = upload(proxy, "moved.png", png(3))
    first = lease(proxy, "alpha")
    time.sleep(2.5)  # alpha's lease (2 s) runs out
    second = lease(proxy, "beta")
    assert second["id"] == first["id"] and second["lease"] != first["lease"]
    late = post(proxy, "alpha", first["id"], CLEAN, first["lease"])
    assert late.status_code == 409, "alpha's old lease is no longer the job's lease"
    assert job_rows(database)[0][1:3] == ("leased", "beta")
    assert post(proxy, "beta", second["id"], CAUGHT, second["lease"]).status_code == 200
    assert post(proxy, "beta", second["id"], CLEAN, second["lease"]).status_code == 409, "decided once"
    thread.join(30)
    assert refused(outcome) and proxy.upstream_keys() == []
    assert job_rows(database)[0][1:] == ("done", "beta", "beta")
    evidence_verifies(config)


def test_a_real_worker_decides_while_an_attacker_posts(pull, test_pack_path: Path) -> None:
    """alpha is a real `bucketguard inference worker` (pausing 3 s per job); beta posts a catching result
    for alpha's job to get a benign upload refused: refused, and alpha's real verdict lands the upload."""
    proxy, database, config = pull
    worker = subprocess.Popen([sys.executable, "-m", "proxy.cli", "inference", "worker", "--proxy", proxy.endpoint,
                               "--token", TOKENS["alpha"], "--pack", str(test_pack_path), "--provider", "cpu",
                               "--batch", "1", "--pause-s", "3"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        data = png(4)
        thread, outcome = upload(proxy, "benign.png", data)
        job_id = wait_for_job(database, "leased")
        for token in ("", "forged"):
            assert post(proxy, "beta", job_id, CAUGHT, token).status_code == 409
        thread.join(60)
        assert outcome.get("landed"), outcome
        assert proxy.upstream.get(proxy.real_bucket, "benign.png") == data
        assert job_rows(database)[0][1:] == ("done", "alpha", "alpha")
        evidence_verifies(config)
    finally:
        worker.terminate()
        worker.wait(10)
