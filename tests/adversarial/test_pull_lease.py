"""Pull mode, who may decide (issue 9, who may do what): a worker with a valid token posts results for jobs it
does not hold, never leased, or held once but lost to another worker. Only the worker holding the job's
current lease (its lease token) decides; the others get 409 and change nothing. The proxy's app in pull mode
(build_app, as `bucketguard serve` runs it, in this process), raw HTTP posts as the attacking worker sends them,
a real `bucketguard inference worker` process; judged by the bucket on moto, the job rows and
`bucketguard evidence verify`.

The leases live in the state database: the module runs on SQLite and on a real PostgreSQL, one proxy per engine
shared by its tests (each test uploads its own key and reads its own job)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from proxy.app import build_app
from proxy.config import load_config
from tests.support.cli import run_cli
from tests.support.moto import S3Server
from tests.support.postgres import run_sql
from tests.support.proxy import (
    CLIENT_BUCKET,
    RunningProxy,
    new_bucket,
    start_in_process,
    use_database,
    write_config,
)

TOKENS = {"alpha": "alpha-token-123", "beta": "beta-token-456"}
CAUGHT = {"signals": {"nsfw": 1.0}, "packs": []}
CLEAN = {"signals": {"nsfw": 0.0}, "packs": []}
#: The one upload of this module that lands (the others are refused): no other key may ever be in the bucket.
LANDS = "benign.png"


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).resize((120, 80)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pull(moto_server: S3Server, tmp_path_factory: pytest.TempPathFactory, module_database_url: str):
    tmp_path = tmp_path_factory.mktemp("pull")
    bucket = new_bucket(moto_server)
    policy = tmp_path / "policy.toml"
    policy.write_text('on_unavailable = "refuse"\n[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\n'
                      'action = "quarantine"\n')
    tokens = "\n".join(f'{name} = "{token}"' for name, token in TOKENS.items())
    config = write_config(tmp_path, moto_server, bucket, server=f"[server.worker_tokens]\n{tokens}",
                          inference='mode = "pull"\nlease_s = 2',
                          screening=f'policy = "{policy}"\nscan_timeout_s = 25')
    use_database(config, module_database_url)
    loaded = load_config(config)
    proxy = start_in_process(loaded, moto_server, bucket, config, app=build_app(loaded))
    yield proxy, module_database_url, config
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


def job_row(database: str, data: bytes) -> tuple:
    """The (id, state, worker, decided_by) of the one job for these bytes (each test uploads its own)."""
    (row,) = run_sql(database, "SELECT id, state, worker, decided_by FROM inference_jobs WHERE sha256 = :sha256",
                     sha256=hashlib.sha256(data).hexdigest())
    return row


def wait_for_job(database: str, data: bytes, state: str) -> str:
    """Waits on the job's row (written when the proxy queues the upload) until it is in `state`."""
    sha256 = hashlib.sha256(data).hexdigest()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = run_sql(database, "SELECT id FROM inference_jobs WHERE sha256 = :sha256 AND state = :state",
                       sha256=sha256, state=state)
        if rows:
            return rows[0][0]
        time.sleep(0.05)
    raise AssertionError(f"no {state} job")


def nothing_refused_landed(proxy: RunningProxy) -> bool:
    """The whole real bucket, staging included, holds at most the one upload a worker let land."""
    return set(proxy.upstream_keys()) <= {LANDS}


def evidence_verifies(config: Path) -> None:
    result = run_cli("evidence", "verify", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def refused(outcome: dict) -> bool:
    error = outcome.get("error")
    return error is not None and getattr(error, "response", {}).get("Error", {}).get("Code") == "AccessDenied"


def test_another_workers_job_cannot_be_decided(pull) -> None:
    proxy, database, config = pull
    data = png(1)
    thread, outcome = upload(proxy, "held.png", data)
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
    assert job_row(database, data)[1:] == ("leased", "alpha", "")
    assert post(proxy, "alpha", job["id"], CAUGHT, job["lease"]).status_code == 200
    thread.join(30)
    assert refused(outcome), outcome
    assert nothing_refused_landed(proxy), "alpha's verdict decided: nothing landed"
    assert job_row(database, data) == (job["id"], "done", "alpha", "alpha")
    evidence_verifies(config)


def test_a_job_never_leased_cannot_be_decided(pull) -> None:
    proxy, database, config = pull
    data = png(2)
    thread, outcome = upload(proxy, "queued.png", data)
    job_id = wait_for_job(database, data, "queued")
    answer = post(proxy, "beta", job_id, CLEAN, "any-token")
    assert answer.status_code == 409
    assert post(proxy, "beta", job_id, CLEAN).status_code == 409
    assert job_row(database, data)[1] == "queued", "the job is still waiting for a real lease"
    job = lease(proxy, "alpha")
    assert job["id"] == job_id
    assert post(proxy, "alpha", job_id, CAUGHT, job["lease"]).status_code == 200
    thread.join(30)
    assert refused(outcome) and nothing_refused_landed(proxy)
    assert job_row(database, data) == (job_id, "done", "alpha", "alpha")
    evidence_verifies(config)


def test_a_lost_lease_cannot_decide_after_another_worker_took_the_job(pull) -> None:
    proxy, database, config = pull
    data = png(3)
    thread, outcome = upload(proxy, "moved.png", data)
    first = lease(proxy, "alpha")
    second = lease(proxy, "beta")  # a long poll: answered once alpha's lease (2 s) has run out
    assert second["id"] == first["id"] and second["lease"] != first["lease"]
    late = post(proxy, "alpha", first["id"], CLEAN, first["lease"])
    assert late.status_code == 409, "alpha's old lease is no longer the job's lease"
    assert job_row(database, data)[1:3] == ("leased", "beta")
    assert post(proxy, "beta", second["id"], CAUGHT, second["lease"]).status_code == 200
    assert post(proxy, "beta", second["id"], CLEAN, second["lease"]).status_code == 409, "decided once"
    thread.join(30)
    assert refused(outcome) and nothing_refused_landed(proxy)
    assert job_row(database, data)[1:] == ("done", "beta", "beta")
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
        thread, outcome = upload(proxy, LANDS, data)
        job_id = wait_for_job(database, data, "leased")
        for token in ("", "forged"):
            assert post(proxy, "beta", job_id, CAUGHT, token).status_code == 409
        thread.join(60)
        assert outcome.get("landed"), outcome
        assert proxy.upstream.get(proxy.real_bucket, LANDS) == data
        assert nothing_refused_landed(proxy)
        assert job_row(database, data) == (job_id, "done", "alpha", "alpha")
        evidence_verifies(config)
    finally:
        worker.terminate()
        worker.wait(10)
