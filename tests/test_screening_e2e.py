"""Screening end to end: moto, the proxy with its pipeline, the `test` pack, pict-rs emulation and boto3.

Quarantine, evidence chain, verdict cache and multipart state live in the proxy's state database: every test runs
with it on SQLite and on a real PostgreSQL (`database_url`); the commands run in this process (run_cli).
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import subprocess
from pathlib import Path

import botocore.exceptions
import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from inference.engine import Engine
from proxy.demo.pictrs_client import PictrsClient, PictrsError
from proxy.screening.hashing import pdq_hash
from proxy.screening.testimage import generate_png
from tests.support.cli import run_cli
from tests.support.postgres import run_sql
from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY

MIB = 1024 * 1024


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@functools.cache
def reencodings() -> dict[str, tuple[bytes, str]]:
    """The test image as pict-rs would store it: lower-quality JPEG and WebP, resized to 70%."""
    original = Image.open(io.BytesIO(generate_png()))
    small = original.resize((448, 336), Image.Resampling.LANCZOS)
    return {
        "original.png": (generate_png(), "image/png"),
        "q60.jpg": (encode(original, "JPEG", quality=60), "image/jpeg"),
        "q50-small.webp": (encode(small, "WEBP", quality=50), "image/webp"),
        "q70-small.jpg": (encode(small, "JPEG", quality=70), "image/jpeg"),
    }


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)


def items(config: Path) -> list[dict]:
    result = cli("quarantine", "list", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pipeline_of(proxy):
    return proxy.app.app.state.bucketguard.extras["pipeline"]


def pictrs(proxy, generation: str = "header") -> PictrsClient:
    return PictrsClient(proxy.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], generation=generation)


@functools.cache  # the same bytes for every proxy: encoded and hashed once
def samples() -> tuple[dict[str, bytes], str]:
    """The block-listed, near-duplicate and allow-listed uploads, and the PDQ hash the block list holds."""
    near_duplicate_source = photo("rocket")
    near = encode(near_duplicate_source.resize((448, 299)), "JPEG", quality=70)
    data = {"blocked": encode(photo("coffee"), "PNG"), "near": near, "allowed": encode(photo("chelsea"), "PNG")}
    return data, pdq_hash(encode(near_duplicate_source, "PNG")).hash_hex


@pytest.fixture
def screening_proxy(proxy_factory, test_pack_path: Path, tmp_path: Path, database_url: str):
    """The proxy with its real pipeline: the `test` pack in-process, a block list, an allow list."""
    data, pdq_hex = samples()
    blocked, allowed = data["blocked"], data["allowed"]
    import hashlib

    block = tmp_path / "block.txt"
    block.write_text(f"# operator block list\nsha256:{hashlib.sha256(blocked).hexdigest()} known-bad\n"
                     f"pdq:{pdq_hex} known-bad-perceptual\n")
    allow = tmp_path / "allow.txt"
    allow.write_text(f"sha256:{hashlib.sha256(allowed).hexdigest()} reviewed-ok\n")
    # The test pack's scores mean nothing, so this policy has no rule over them (the default's clip-csam
    # rule would fire at random); lists, the test image and the pipeline's plumbing are what is tested here.
    policy = tmp_path / "policy.toml"
    policy.write_text('on_undecodable = "reject"\n[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\n'
                      'action = "flag"\n')
    proxy = proxy_factory(
        pipeline=True,
        server='validate_token = "validate-secret"',
        inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]\nprovider = "cpu"',
        screening=f'policy = "{policy}"\nblock_lists = ["{block}"]\nallow_lists = ["{allow}"]',
        database_url=database_url)
    proxy.database_url = database_url
    proxy.samples = data
    return proxy


def test_test_image_and_its_reencodings_end_in_quarantine(screening_proxy) -> None:
    client = pictrs(screening_proxy)
    for name, (data, mime) in reencodings().items():
        with pytest.raises(PictrsError) as info:
            client.put(f"test/{name}", data, mime)
        assert info.value.status == 403 and info.value.code == "AccessDenied", name
    assert screening_proxy.upstream_keys() == []
    caught = items(screening_proxy.config_path)
    assert sorted(i["key"] for i in caught) == sorted(f"test/{n}" for n in reencodings())
    assert {i["category"] for i in caught} == {"test"} and {i["status"] for i in caught} == {"quarantined"}
    verify = cli("evidence", "verify", "--config", str(screening_proxy.config_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_benign_photographs_land_byte_exact(screening_proxy) -> None:
    client = pictrs(screening_proxy, "presigned")
    for name in ("astronaut", "camera", "horse", "moon"):
        data = encode(photo(name), "JPEG", quality=85)
        assert client.store(f"photos/{name}.jpg", data, "image/jpeg") == data
        assert screening_proxy.upstream.get(screening_proxy.real_bucket, f"photos/{name}.jpg") == data
    assert items(screening_proxy.config_path) == []


def test_block_lists_allow_list_and_cache(screening_proxy) -> None:
    s3 = screening_proxy.client()
    pipeline = pipeline_of(screening_proxy)
    samples = screening_proxy.samples
    for key, data in (("blocked.png", samples["blocked"]), ("near.jpg", samples["near"])):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.put_object(Bucket=CLIENT_BUCKET, Key=key, Body=data, ContentType="image/png")
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    rules = {i["key"]: i["rule"] for i in items(screening_proxy.config_path)}
    assert rules == {"blocked.png": "blocklist:block.txt", "near.jpg": "blocklist:block.txt"}

    calls = pipeline.detector_calls
    s3.put_object(Bucket=CLIENT_BUCKET, Key="allowed.png", Body=screening_proxy.samples["allowed"],
                  ContentType="image/png")
    assert pipeline.detector_calls == calls, "an allow-listed hash must never reach the detectors"

    fresh = encode(photo("brick"), "PNG")
    s3.put_object(Bucket=CLIENT_BUCKET, Key="first.png", Body=fresh, ContentType="image/png")
    assert pipeline.detector_calls == calls + 1
    s3.put_object(Bucket=CLIENT_BUCKET, Key="second.png", Body=fresh, ContentType="image/png")
    assert pipeline.detector_calls == calls + 1, "identical bytes are decided from the cache"
    metrics = httpx.get(f"{screening_proxy.endpoint}/metrics").text
    assert 'bucketguard_verdict_steps_total{step="cache"} 1.0' in metrics
    assert 'bucketguard_verdict_cache_total{result="hit"} 1.0' in metrics
    assert sorted(screening_proxy.upstream_keys()) == ["allowed.png", "first.png", "second.png"]


def test_multipart_upload_of_a_flagged_large_image_leaves_nothing(screening_proxy) -> None:
    big = Image.open(io.BytesIO(generate_png())).convert("RGB").resize((3000, 2250), Image.Resampling.BICUBIC)
    data = encode(big, "BMP")
    assert len(data) > 16 * MIB
    client = pictrs(screening_proxy)
    with pytest.raises(PictrsError) as info:
        client.put_multipart("big/test.bmp", data, "image/bmp")
    assert info.value.status == 403
    assert screening_proxy.upstream_keys() == []
    assert screening_proxy.upstream.multipart_uploads(screening_proxy.real_bucket) == []
    assert [i["key"] for i in items(screening_proxy.config_path)] == ["big/test.bmp"]


def test_validate_endpoint(screening_proxy) -> None:
    url = f"{screening_proxy.endpoint}/validate"
    assert httpx.post(url, content=generate_png()).status_code == 401
    refused = httpx.post(f"{url}?token=validate-secret", content=reencodings()["q60.jpg"][0],
                         headers={"Content-Type": "image/jpeg"})
    assert refused.status_code == 406
    benign = httpx.post(url, content=encode(photo("astronaut"), "JPEG"),
                        headers={"Content-Type": "image/jpeg", "Authorization": "Bearer validate-secret"})
    assert benign.status_code == 200
    assert [i["key"] for i in items(screening_proxy.config_path)] == ["(external-validation)"]


def test_tampering_with_evidence_is_named(screening_proxy) -> None:
    client = pictrs(screening_proxy)
    for name, (data, mime) in list(reencodings().items())[:3]:
        with pytest.raises(PictrsError):
            client.put(f"t/{name}", data, mime)
    config = screening_proxy.config_path
    assert cli("evidence", "verify", "--config", str(config)).returncode == 0
    run_sql(screening_proxy.database_url, "UPDATE evidence_records SET key = 'innocent.png' WHERE seq = 2")
    result = cli("evidence", "verify", "--config", str(config))
    assert result.returncode == 1
    assert "2" in (result.stdout + result.stderr) and "changed" in (result.stdout + result.stderr)


def test_policy_rule_over_detector_signals_quarantines(proxy_factory, test_pack_path: Path, tmp_path: Path,
                                                       database_url: str) -> None:
    """A detector-driven hit: a rule over a signal of the test pack, with a threshold this image crosses."""
    target, other = encode(photo("horse"), "PNG"), encode(photo("astronaut"), "PNG")

    async def margins() -> tuple[float, float]:
        engine = Engine.from_packs([test_pack_path])
        try:
            results = [await engine.screen(data, "image/png") for data in (target, other)]
        finally:
            await engine.close()
        return results[0].signals["clip_underage_margin"], results[1].signals["clip_underage_margin"]

    margin, other_margin = asyncio.run(margins())
    assert other_margin != margin
    policy = tmp_path / "policy.toml"
    op = ">=" if margin > other_margin else "<="
    policy.write_text(f'[[rule]]\nname = "detector-hit"\nwhen = {{ clip_underage_margin = "{op} {margin}" }}\n'
                      'action = "quarantine"\ncategory = "test-detector"\n')
    proxy = proxy_factory(pipeline=True, inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]',
                          screening=f'policy = "{policy}"', database_url=database_url)
    s3 = proxy.client()
    with pytest.raises(botocore.exceptions.ClientError):
        s3.put_object(Bucket=CLIENT_BUCKET, Key="hit.png", Body=target, ContentType="image/png")
    s3.put_object(Bucket=CLIENT_BUCKET, Key="clean.png", Body=other, ContentType="image/png")
    assert proxy.upstream_keys() == ["clean.png"]
    caught = items(proxy.config_path)
    assert [(i["key"], i["rule"]) for i in caught] == [("hit.png", "detector-hit")]
    assert json.loads(json.dumps(caught[0]["signals"]))["clip_underage_margin"] == pytest.approx(margin)
    assert np.isfinite(margin)
