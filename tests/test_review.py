"""Review decisions with the real CLI against a running proxy: release restores bytes and allow-lists them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest

from proxy.screening.testimage import generate_png
from tests.support.proxy import CLIENT_BUCKET


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120)


def test_release_then_upload_again_is_allowed_without_a_detector_call(proxy_factory, test_pack_path: Path) -> None:
    proxy = proxy_factory(pipeline=True, inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]')
    config = str(proxy.config_path)
    s3 = proxy.client()
    with pytest.raises(botocore.exceptions.ClientError):
        s3.put_object(Bucket=CLIENT_BUCKET, Key="avatar.png", Body=generate_png(), ContentType="image/png")
    (item,) = json.loads(cli("quarantine", "list", "--json", "--config", config).stdout)
    assert proxy.upstream_keys() == []

    released = cli("quarantine", "release", item["id"], "--config", config, "--actor", "admin:alice")
    assert released.returncode == 0, released.stderr
    assert proxy.upstream.get(proxy.real_bucket, "avatar.png") == generate_png()
    again = cli("quarantine", "release", item["id"], "--config", config)
    assert again.returncode == 1 and "only quarantined items" in again.stderr

    pipeline = proxy.app.app.state.bucketguard.extras["pipeline"]
    calls = pipeline.detector_calls
    s3.put_object(Bucket=CLIENT_BUCKET, Key="avatar-again.png", Body=generate_png(), ContentType="image/png")
    assert pipeline.detector_calls == calls
    assert sorted(proxy.upstream_keys()) == ["avatar-again.png", "avatar.png"]
    shown = json.loads(cli("quarantine", "show", item["id"], "--json", "--config", config).stdout)
    assert shown["status"] == "released"
    assert cli("evidence", "verify", "--config", config).returncode == 0


def test_confirm(proxy_factory) -> None:
    proxy = proxy_factory(pipeline=True)
    config = str(proxy.config_path)
    with pytest.raises(botocore.exceptions.ClientError):
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="t.png", Body=generate_png(), ContentType="image/png")
    (item,) = json.loads(cli("quarantine", "list", "--json", "--config", config).stdout)
    assert cli("quarantine", "confirm", item["id"], "--config", config).returncode == 0
    assert json.loads(cli("quarantine", "show", item["id"], "--json", "--config", config).stdout)["status"] == \
        "confirmed"
    assert cli("quarantine", "release", item["id"], "--config", config).returncode == 1
