"""When the classifier is away: `defer` lands uploads as pending, and they are scanned when it is back,
even across a kill -9 of the proxy. Real processes: moto, `bucketguard serve`, `bucketguard inference serve`."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import skimage.data
from PIL import Image

from inference.engine import Engine
from tests.support.moto import S3Server, free_port
from tests.support.proxy import CLIENT_BUCKET, new_bucket, start_subprocess, write_config

TOKEN = "inference-token"


def png(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def start_inference(pack: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "proxy.cli", "inference", "serve", "--pack", str(pack),
                                "--listen", f"127.0.0.1:{port}", "--token", TOKEN, "--provider", "cpu"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120  # loading a pack on a loaded 2-core machine
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"inference service did not start (exit status {process.returncode})")


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    """Poll a real condition until a deadline generous for a loaded machine (it returns as soon as it holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def quarantined(config: Path) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "list", "--json", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def deferred_setup(moto_server: S3Server, test_pack_path: Path, tmp_path: Path):
    """A proxy whose only detector is an inference service that is down, and a policy the target trips."""
    target, clean = png("horse"), png("astronaut")

    async def margins() -> tuple[float, float]:
        engine = Engine.from_packs([test_pack_path])
        try:
            results = [await engine.screen(data, "image/png") for data in (target, clean)]
        finally:
            await engine.close()
        return results[0].signals["clip_underage_margin"], results[1].signals["clip_underage_margin"]

    hit, miss = asyncio.run(margins())
    op = ">=" if hit > miss else "<="
    policy = tmp_path / "policy.toml"
    policy.write_text(f'on_unavailable = "defer"\n[[rule]]\nname = "detector-hit"\n'
                      f'when = {{ clip_underage_margin = "{op} {hit}" }}\naction = "quarantine"\n')
    port = free_port()
    bucket = new_bucket(moto_server)
    config = write_config(tmp_path, moto_server, bucket,
                          inference=f'mode = "remote"\nendpoints = ["http://127.0.0.1:{port}"]\n'
                                    f'token = "{TOKEN}"\ntimeout_s = 2\nretries = 0',
                          screening=f'policy = "{policy}"\nscan_timeout_s = 3\npending_poll_s = 0.3\n'
                                    'pending_retry_s = 0.5')
    return {"config": config, "bucket": bucket, "port": port, "target": target, "clean": clean}


def test_defer_lands_then_scans_when_the_service_is_back(deferred_setup, moto_server, test_pack_path) -> None:
    setup = deferred_setup
    proxy = start_subprocess(setup["config"], moto_server, setup["bucket"])
    service = None
    try:
        s3 = proxy.client()
        s3.put_object(Bucket=CLIENT_BUCKET, Key="hit.png", Body=setup["target"], ContentType="image/png")
        s3.put_object(Bucket=CLIENT_BUCKET, Key="clean.png", Body=setup["clean"], ContentType="image/png")
        assert sorted(moto_server.keys(setup["bucket"])) == ["clean.png", "hit.png"], "defer lets uploads land"
        wait_for(lambda: "bucketguard_pending_scans 2.0" in httpx.get(f"{proxy.endpoint}/metrics", timeout=30).text,
                 what="the pending gauge to count both uploads")
        service = start_inference(test_pack_path, setup["port"])
        wait_for(lambda: moto_server.keys(setup["bucket"]) == ["clean.png"], what="the hit to leave the bucket")
        caught = quarantined(setup["config"])
        assert [(i["key"], i["rule"], i["status"]) for i in caught] == [("hit.png", "detector-hit", "quarantined")]
    finally:
        proxy.stop()
        if service is not None:
            service.terminate()
            service.wait(10)


def test_pending_work_survives_kill_9(deferred_setup, moto_server, test_pack_path) -> None:
    setup = deferred_setup
    proxy = start_subprocess(setup["config"], moto_server, setup["bucket"])
    service = None
    try:
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="hit.png", Body=setup["target"],
                                  ContentType="image/png")
        os.kill(proxy.process.pid, signal.SIGKILL)
        proxy.process.wait(10)
        service = start_inference(test_pack_path, setup["port"])
        assert moto_server.keys(setup["bucket"]) == ["hit.png"]
        proxy = start_subprocess(setup["config"], moto_server, setup["bucket"])
        wait_for(lambda: moto_server.keys(setup["bucket"]) == [], what="the restarted proxy to finish the scan")
        assert [i["key"] for i in quarantined(setup["config"])] == ["hit.png"]
    finally:
        proxy.stop()
        if service is not None:
            service.terminate()
            service.wait(10)
