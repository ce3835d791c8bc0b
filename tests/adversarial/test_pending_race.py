"""Deferred scans against a slow, lossy and crashing world (issue 9, races and crashes).

The upload is deferred (the detectors are down, `on_unavailable = "defer"`), so its pending row is written
before the object is written upstream. A real TCP relay in front of moto holds the PutObject (or drops it),
and the proxy is a real `bucketguard serve` where it must be killed (elsewhere the same app and inference
service run in this process, uvicorn in a thread: no interpreter to start). Every test is judged by what is
really in the bucket on moto, by the quarantine/evidence the CLI reports and by `bucketguard evidence verify`.

The pending rows live in the state database: every test runs on SQLite and on a real PostgreSQL (`database_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config as BotoConfig
from PIL import Image

from inference.engine import Engine
from inference.service import create_inference_app
from proxy.demo.servers import serve_in_thread
from tests.adversarial.relay import SlowRelay
from tests.support.cli import run_cli
from tests.support.moto import S3Server, free_port
from tests.support.postgres import run_sql
from tests.support.proxy import (
    CLIENT_BUCKET,
    CLIENTS,
    PICTRS_KEY,
    new_bucket,
    start_subprocess,
    use_database,
    write_config,
)

TOKEN = "inference-token"
#: Any image the detectors look at is caught: a quarantine proves the deferred scan really ran them.
CATCH_ALL = ('on_unavailable = "defer"\n[[rule]]\nname = "scanned"\n'
             'when = { clip_underage_margin = ">= -1000" }\naction = "quarantine"\n')


def photo(seed: int) -> bytes:
    image = Image.new("RGB", (96, 64), (seed * 40 % 256, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def relay(moto_server: S3Server) -> Iterator[SlowRelay]:
    relay = SlowRelay(int(moto_server.endpoint.rsplit(":", 1)[1]))
    yield relay
    relay.close()


@pytest.fixture
def world(relay: SlowRelay, moto_server: S3Server, tmp_path: Path, database_url: str, proxy_factory):
    relay.put_delay_s, relay.drop_puts, relay.answer_delay_s = 0.0, False, 0.0
    bucket = new_bucket(moto_server)
    policy = tmp_path / "policy.toml"
    policy.write_text(CATCH_ALL)
    port = free_port()

    def config(**screening: object) -> Path:
        lines = "\n".join(f"{k} = {v}" for k, v in {"pending_poll_s": 0.1, "pending_retry_s": 0.2,
                                                      **screening}.items())
        path = write_config(tmp_path, S3Server(relay.endpoint), bucket,
                            inference=f'mode = "remote"\nendpoints = ["http://127.0.0.1:{port}"]\n'
                                      f'token = "{TOKEN}"\ntimeout_s = 2\nretries = 0',
                            screening=f'policy = "{policy}"\nscan_timeout_s = 3\n{lines}')
        use_database(path, database_url)
        return path

    def here(config: Path):  # the proxy's app (build_app, as `bucketguard serve` runs it) in this process
        return proxy_factory(config_path=config, real_bucket=bucket, pipeline=True)

    yield {"bucket": bucket, "port": port, "config": config, "db": database_url, "tmp": tmp_path, "here": here}
    relay.put_delay_s, relay.drop_puts, relay.answer_delay_s = 0.0, False, 0.0


def client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=PICTRS_KEY,
                        aws_secret_access_key=CLIENTS[PICTRS_KEY],
                        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          read_timeout=30))


def put_in_background(endpoint: str, key: str, data: bytes) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def send() -> None:
        try:
            result["etag"] = client(endpoint).put_object(Bucket=CLIENT_BUCKET, Key=key, Body=data,
                                                         ContentType="image/png")["ETag"]
        except Exception as exc:  # the client's view is asserted by the test
            result["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, result


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started (its decode workers), as a crash of its host would:
    an orphaned child keeps the proxy's client connections open."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def pending_rows(db: str) -> list[tuple[str, str, str]]:
    return run_sql(db, "SELECT key, state, outcome FROM pending_scans ORDER BY id")


def wait_for(condition, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)  # in this process: what the commands report is the subject, not the command as a process


def quarantined(config: Path) -> list[dict]:
    result = cli("quarantine", "list", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_chain_verifies(config: Path) -> None:
    result = cli("evidence", "verify", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


@contextlib.contextmanager
def inference_service(pack: Path, port: int) -> Iterator[None]:
    """The inference service (the app `bucketguard inference serve` runs) on `port`, in this process, up and
    answering /readyz when this returns."""
    engine = Engine.from_packs([pack])
    endpoint, stop = serve_in_thread(create_inference_app(engine, TOKEN), port=port)
    try:
        assert httpx.get(f"{endpoint}/readyz", timeout=10).status_code == 200
        yield
    finally:
        stop()
        asyncio.run(engine.close())


def test_a_slow_write_is_scanned_once_it_lands_never_closed_as_gone(world, relay, moto_server,
                                                                     test_pack_path) -> None:
    """The worker polls every 0.1 s while the upstream holds the PUT for 4 s: before the fix it took the row,
    got NoSuchKey, closed it as "gone", and the object landed unscanned (3 of 3 tries)."""
    config = world["config"](pending_confirm_s=600)  # only the front's confirmation can start the scan
    proxy = world["here"](config)
    service = contextlib.ExitStack()
    try:
        relay.put_delay_s = 4.0
        thread, result = put_in_background(proxy.endpoint, "slow.png", photo(1))
        wait_for(lambda: pending_rows(world["db"]), timeout=30, what="the pending row")
        time.sleep(1.0)  # several polls of the worker while the write is held
        assert moto_server.keys(world["bucket"]) == [], "the relay still holds the write"
        assert [r[1] for r in pending_rows(world["db"])] == ["unconfirmed"], "not taken before it landed"
        service.enter_context(inference_service(test_pack_path, world["port"]))
        thread.join(60)
        relay.put_delay_s = 0.0
        assert "etag" in result, result.get("error")
        wait_for(lambda: moto_server.keys(world["bucket"]) == [], timeout=90,
                 what="the deferred scan to take the landed object out of the bucket")
        assert [(i["key"], i["rule"], i["status"]) for i in quarantined(config)] == [
            ("slow.png", "scanned", "quarantined")]
        assert [(k, s) for k, s, _ in pending_rows(world["db"])] == [("slow.png", "done")]
        assert_chain_verifies(config)
    finally:
        relay.put_delay_s = 0.0
        proxy.stop()
        service.close()


def test_proxy_killed_before_confirming_then_detectors_never_answer(world, relay, moto_server) -> None:
    """kill -9 after the write landed but before its answer came back (the relay holds the answer): the row is
    unconfirmed. The restarted proxy (this time in this process)
    finds it by the confirm deadline; the detectors never answer, so after a bounded number of attempts it
    ends flagged for review with an evidence record, not retried for ever."""
    config = world["config"](pending_confirm_s=6.5, pending_max_attempts=3)  # longer than the held answer
    proxy = start_subprocess(config, moto_server, world["bucket"])
    data = photo(2)
    try:
        relay.answer_delay_s = 3.5
        thread, result = put_in_background(proxy.endpoint, "orphan.png", data)
        wait_for(lambda: moto_server.keys(world["bucket"]) == ["orphan.png"], timeout=30,
                 what="the write to land upstream")
        kill_tree(proxy.process.pid)
        proxy.process.wait(10)
        thread.join(60)
        relay.answer_delay_s = 0.0
        assert "error" in result, "the client never saw a success"
        assert [r[1] for r in pending_rows(world["db"])] == ["unconfirmed"]
        proxy = world["here"](config)
        rows = wait_for(lambda: [r for r in pending_rows(world["db"]) if r[1] == "done"], timeout=60,
                        what="the row to end after its attempts")
        assert rows[0][0] == "orphan.png" and rows[0][2].startswith("flagged: deferred scan gave up after 3 attempts")
        assert moto_server.get(world["bucket"], "orphan.png") == data, "flagged objects stay, byte-exact"
        caught = quarantined(config)
        assert [(i["key"], i["rule"], i["status"]) for i in caught] == [
            ("orphan.png", "deferred-scan-gave-up", "flagged")]
        assert_chain_verifies(config)
    finally:
        relay.answer_delay_s = 0.0
        proxy.stop()


def test_a_write_that_never_lands_is_reported_missing_not_closed(world, relay, moto_server,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The upstream drops the PutObject: nothing lands; the row is looked at until its deadline, then ends
    `missing` with a warning, never `done`."""
    config = world["config"](pending_confirm_s=0.5, pending_missing_s=3)
    caplog.set_level(logging.WARNING, logger="bucketguard.pending")
    proxy = world["here"](config)
    try:
        relay.drop_puts = True
        thread, result = put_in_background(proxy.endpoint, "lost.png", photo(3))
        thread.join(60)
        assert "error" in result, "a dropped write is no success"
        relay.drop_puts = False
        rows = wait_for(lambda: [r for r in pending_rows(world["db"]) if r[1] != "unconfirmed"], timeout=30,
                        what="the row to be decided")
        assert [(k, s) for k, s, _ in rows] == [("lost.png", "missing")]
        assert "never confirmed written" in rows[0][2]
        assert moto_server.keys(world["bucket"]) == []
        warned = [r.getMessage() for r in caplog.records if r.name == "bucketguard.pending"]
        assert any("lost.png" in m and "not scanned" in m for m in warned), warned
    finally:
        proxy.stop()
