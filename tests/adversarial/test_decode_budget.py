"""Time and memory as weapons (issue 9): decodes that would burn minutes or gigabytes are refused from their
headers or stopped at hard limits in killable worker processes, and end as `undecodable` (the policy's
`on_undecodable`), never as "the detectors are unavailable", which `defer` would land unscanned.

The end-to-end case runs a real `bucketguard serve` process with the `test` pack in front of moto, and is
judged by the real bucket, the client's answer, the quarantine list, the pending gauge, `evidence verify`
and the proxy process's own peak memory.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import httpx
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inference.batcher import QueueFull
from inference.client import InferenceClient
from inference.decode_pool import DecodeBusy, DecodeLimitExceeded, DecodeLimits, DecodePool, shared_pool
from inference.engine import Engine
from inference.media import Media, MediaLimits, decode
from inference.service import create_inference_app
from proxy.demo.servers import serve_in_thread
from proxy.screening.hashlists import HashLists, builtin_test_list
from proxy.screening.pipeline import Pipeline
from proxy.screening.policy import parse_policy
from proxy.storage.spool import SpooledBody
from tests.support.media_attacks import (
    bomb_gif,
    burn_cpu,
    encode,
    hidden_in_animation,
    hidden_in_mp4,
    hog_memory,
    png_claiming,
    sleep_for,
    worker_pid,
)
from tests.support.moto import S3Server, free_port
from tests.support.proxy import CLIENT_BUCKET, RunningProxy, new_bucket, start_subprocess, write_config

TARGET = (224, 224)


def photo_png(name: str = "astronaut", size: int = 256) -> bytes:
    return encode(Image.fromarray(getattr(skimage.data, name)()).resize((size, size)), "PNG")


# ---- the budget, before decoding --------------------------------------------------------------------------

def test_the_bomb_is_refused_from_its_headers() -> None:
    """7999x7999 x 400 frames: over the canvas-times-frames budget, decided without decoding a pixel."""
    data = bomb_gif()
    assert len(data) < 10_000
    media = decode(data, "image/gif", MediaLimits(), TARGET)
    assert media.undecodable and media.over_budget and not media.frames
    assert "7999x7999 x 400 frames" in media.reason
    one_frame_too_big = decode(png_claiming(9000, 9000), None, MediaLimits(), TARGET)
    assert one_frame_too_big.over_budget and "per frame" in one_frame_too_big.reason
    small = decode(bomb_gif(64, 64, 5), None, MediaLimits(), TARGET)
    assert not small.undecodable and small.kind == "animation" and small.frame_count == 5


# ---- the hard limits: a worker process that can be killed --------------------------------------------------

@pytest.fixture(scope="module")
def strict_pool() -> Iterator[DecodePool]:
    pool = DecodePool(1, DecodeLimits(cpu_seconds=1, wall_seconds=20, memory_bytes=256 * 1024 * 1024))
    yield pool
    pool.close()


def test_cpu_time_limit_kills_the_worker_and_it_is_replaced(strict_pool: DecodePool) -> None:
    before = strict_pool.call(worker_pid)
    with pytest.raises(DecodeLimitExceeded) as info:
        strict_pool.call(burn_cpu)
    assert not info.value.wall_clock and "CPU-time" in str(info.value)
    after = strict_pool.call(worker_pid)
    assert after != before, "the killed worker was replaced by a fresh process"
    assert strict_pool.call(decode, photo_png(), None, MediaLimits(), TARGET).kind == "image"


def test_memory_limit_stops_an_allocation(strict_pool: DecodePool) -> None:
    with pytest.raises(DecodeLimitExceeded):
        strict_pool.call(hog_memory, 2048)
    assert strict_pool.call(decode, photo_png(), None, MediaLimits(), TARGET).kind == "image"


def test_wall_deadline_kills_a_decoder_that_uses_no_cpu() -> None:
    pool = DecodePool(1, DecodeLimits(cpu_seconds=5, wall_seconds=1))
    try:
        pool.call(worker_pid)  # started (a spawned worker's imports are not the task's time)
        with pytest.raises(DecodeLimitExceeded) as info:
            pool.call(sleep_for, 60)
        assert info.value.wall_clock and pool.stopped == 1
        assert pool.call(worker_pid) > 0
    finally:
        pool.close()


def test_a_caller_that_gives_up_kills_the_decode(strict_pool: DecodePool) -> None:
    """A scan timeout cancels the wait: the worker is killed and replaced, not left burning behind it."""

    async def give_up() -> tuple[int, int]:
        before = await strict_pool.run(worker_pid)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(strict_pool.run(sleep_for, 30), 1)
        return before, await strict_pool.run(worker_pid)

    before, after = asyncio.run(give_up())
    assert before != after


def test_a_full_queue_is_busy_at_once_not_a_growing_wait() -> None:
    pool = DecodePool(1, DecodeLimits(wall_seconds=60, max_waiting=1))
    try:
        pool.call(worker_pid)
        waiting = [pool.submit(sleep_for, 30) for _ in range(2)]  # one running, one waiting
        with pytest.raises(DecodeBusy):
            pool.submit(worker_pid)
        for future in waiting:
            future.cancel()
        assert pool.call(worker_pid) > 0, "the pool serves again once the queue drains"
    finally:
        pool.close()


def test_busy_decoders_refuse_the_upload_for_a_retry(test_pack_path: Path) -> None:
    """The proxy's own decode pool full: the upload is refused (503 SlowDown, pict-rs retries), never landed
    unhashed; the engine's full decode pool is an outage (QueueFull), never `undecodable`."""
    from proxy.screening.hashing import frame_hashes_sync

    pool = shared_pool()
    frame_hashes_sync(photo_png())  # started
    builtin_test_list()  # the pipeline's own list is hashed before the pool is filled
    occupied = [pool.submit(sleep_for, 60) for _ in range(pool.workers + pool.limits.max_waiting)]
    try:
        decision, calls = decide_with(None, photo_png())
        assert (decision.action, decision.rule, calls) == ("refuse", "decode-busy", 0)
    finally:
        for future in occupied:
            future.cancel()

    async def engine_busy() -> None:
        engine = Engine.from_packs([test_pack_path], decode_workers=1, decode_limits=DecodeLimits(max_waiting=0))
        try:
            engine.decode_pool.call(worker_pid)
            held = engine.decode_pool.submit(sleep_for, 60)
            with pytest.raises(QueueFull):
                await engine.screen(photo_png(), None)
            held.cancel()
        finally:
            await engine.close()

    asyncio.run(engine_busy())


def test_what_slips_past_the_budget_is_stopped_by_the_limits(strict_pool: DecodePool) -> None:
    """With the header budget lifted, the bomb itself is stopped by the worker's memory or CPU limit."""
    no_budget = MediaLimits(max_total_pixels=10**13, max_pixels=10**9)
    try:
        media = strict_pool.call(decode, bomb_gif(), None, no_budget, TARGET)
    except DecodeLimitExceeded:
        return
    assert media.undecodable and media.over_budget, media.reason


def test_engine_answers_undecodable_not_an_exception(test_pack_path: Path) -> None:
    async def screen() -> list:
        engine = Engine.from_packs([test_pack_path], decode_limits=DecodeLimits(cpu_seconds=2, wall_seconds=10))
        try:
            return [await engine.screen(bomb_gif(), "image/gif"), await engine.screen(photo_png(), None)]
        finally:
            await engine.close()

    bomb, benign = asyncio.run(screen())
    assert bomb.undecodable and bomb.signals == {"undecodable": 1.0} and "decode budget" in bomb.reason
    assert not benign.undecodable and benign.frames == 1


# ---- undecodable is not unavailable ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inference_service(test_pack_path: Path) -> Iterator[str]:
    """A real inference service on loopback that accepts bodies of at most 64 KiB."""
    engine = Engine.from_packs([test_pack_path])
    endpoint, stop = serve_in_thread(create_inference_app(engine, "svc-token", max_body_bytes=64 * 1024))
    yield endpoint
    stop()


def decide_with(detectors, data: bytes, *, on_unavailable: str = "defer"):
    policy = parse_policy({"on_undecodable": "reject", "on_unavailable": on_unavailable})
    pipeline = Pipeline(policy=policy, hashlists=HashLists([], []), cache=None, detectors=detectors,
                        scan_timeout_s=10)

    async def run():
        try:
            return await pipeline.decide(SpooledBody.from_bytes(data), "image/png"), pipeline.detector_calls
        finally:
            if detectors is not None:
                await detectors.close()

    return asyncio.run(run())


def test_only_an_outage_is_unavailable(inference_service: str) -> None:
    benign = encode(Image.fromarray(skimage.data.astronaut()).resize((96, 96)), "JPEG")
    assert len(benign) < 64 * 1024
    down = InferenceClient([f"http://127.0.0.1:{free_port()}"], "svc-token", timeout_s=2, retries=0)
    decision, _ = decide_with(down, benign)
    assert (decision.step, decision.action, decision.pending) == ("unavailable", "allow", True)

    bomb, calls = decide_with(InferenceClient([inference_service], "svc-token"), bomb_gif())
    assert (bomb.step, bomb.action, bomb.rule) == ("undecodable", "reject", "on_undecodable")
    assert calls == 0, "bytes over the decode budget are decided without a detector call"

    big = encode(Image.fromarray(skimage.data.astronaut()), "BMP")  # decodable, over the service's 64 KiB
    refused, calls = decide_with(InferenceClient([inference_service], "svc-token"), big)
    assert calls == 1 and (refused.action, refused.rule) == ("reject", "on_undecodable")
    assert not refused.pending

    clean, _ = decide_with(InferenceClient([inference_service], "svc-token"), benign)
    assert (clean.step, clean.action) == ("detectors", "allow")


def test_a_detector_that_fails_on_the_bytes_is_not_an_outage() -> None:
    """Stand-in for a detector bug (no real detector can be made to raise on demand): anything but an outage
    decides `on_undecodable`, never `defer`."""

    class Broken:
        async def screen(self, data: bytes, content_type: str | None = None):
            raise ValueError("a detector bug")

        async def close(self) -> None:
            return None

    decision, calls = decide_with(Broken(), photo_png())
    assert calls == 1 and (decision.action, decision.rule, decision.pending) == ("reject", "on_undecodable", False)


# ---- end to end: the bomb against a real `bucketguard serve` ------------------------------------------------

def peak_memory_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def serving(moto_server: S3Server, test_pack_path: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """`bucketguard serve` with the `test` pack in-process and the issue's policy: on_unavailable = defer."""
    tmp = tmp_path_factory.mktemp("budget")
    policy = tmp / "policy.toml"
    policy.write_text('on_undecodable = "reject"\non_unavailable = "defer"\n')
    bucket = new_bucket(moto_server)
    config = write_config(tmp, moto_server, bucket,
                          inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]\nprovider = "cpu"',
                          screening=f'policy = "{policy}"\nscan_timeout_s = 20')
    running = start_subprocess(config, moto_server, bucket)
    yield running
    running.stop()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_bomb_is_rejected_as_undecodable_and_the_proxy_does_not_grow(serving: RunningProxy) -> None:
    s3 = serving.client()
    s3.put_object(Bucket=CLIENT_BUCKET, Key="warm/photo.png", Body=photo_png(), ContentType="image/png")
    s3.put_object(Bucket=CLIENT_BUCKET, Key="warm/anim.gif", Body=hidden_in_animation(
        "GIF", Image.fromarray(skimage.data.coffee()).convert("RGB")), ContentType="image/gif")
    assert serving.process is not None
    before = peak_memory_kib(serving.process.pid)
    for index in range(5):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.put_object(Bucket=CLIENT_BUCKET, Key=f"bomb/{index}.gif", Body=bomb_gif(), ContentType="image/gif")
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    grown_mib = (peak_memory_kib(serving.process.pid) - before) / 1024
    assert grown_mib < 64, f"the proxy grew by {grown_mib:.0f} MiB"

    assert sorted(serving.upstream.keys(serving.real_bucket, "")) == ["warm/anim.gif", "warm/photo.png"]
    metrics = httpx.get(f"{serving.endpoint}/metrics").text
    assert "bucketguard_pending_scans 0.0" in metrics, "nothing was deferred"
    listed = cli("quarantine", "list", "--json", "--config", str(serving.config_path))
    assert listed.returncode == 0, listed.stderr
    items = {item["key"]: item for item in json.loads(listed.stdout)}
    assert {(items[f"bomb/{i}.gif"]["status"], items[f"bomb/{i}.gif"]["rule"]) for i in range(5)} == {
        ("rejected", "on_undecodable")}
    verify = cli("evidence", "verify", "--config", str(serving.config_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ---- property tests: whatever the bytes, only the documented outcome ----------------------------------------

def _valid_samples() -> list[bytes]:
    picture = Image.fromarray(skimage.data.astronaut()).resize((96, 96))
    return [encode(picture, "PNG"), encode(picture, "JPEG"), encode(picture, "WEBP"), encode(picture, "GIF"),
            hidden_in_animation("GIF", picture), hidden_in_animation("PNG", picture),
            hidden_in_animation("WEBP", picture), hidden_in_mp4(picture, frames=6, shown=range(2, 3))]


VALID = _valid_samples()


@pytest.fixture(scope="module")
def fuzz_pool() -> Iterator[DecodePool]:
    pool = DecodePool(2, DecodeLimits(cpu_seconds=5, wall_seconds=15, memory_bytes=512 * 1024 * 1024))
    yield pool
    pool.close()


#: Small budgets, so that every example is decided in well under a second.
FUZZ_LIMITS = MediaLimits(max_pixels=20_000_000, max_total_pixels=50_000_000, max_frames=4)


def documented_outcome(pool: DecodePool, data: bytes) -> None:
    """A Media (frames within the sampling and size bounds, or undecodable with a reason), or a stop."""
    limits = FUZZ_LIMITS
    try:
        media = pool.call(decode, data, "image/png", limits, TARGET)
    except DecodeLimitExceeded:
        return
    assert isinstance(media, Media)
    if media.undecodable:
        assert media.reason and not media.frames
    else:
        assert 1 <= len(media.frames) <= limits.max_frames
        assert all(max(frame.size) <= max(TARGET) * 2 and frame.mode == "RGB" for frame in media.frames)


FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(fuzz_pool: DecodePool, data: bytes) -> None:
    documented_outcome(fuzz_pool, data)


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.floats(0.0, 1.0))
def test_truncated_files(fuzz_pool: DecodePool, which: int, fraction: float) -> None:
    data = VALID[which]
    documented_outcome(fuzz_pool, data[: int(len(data) * fraction)])


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)),
                                                    min_size=1, max_size=6))
def test_corrupted_headers(fuzz_pool: DecodePool, which: int, edits: list[tuple[int, int]]) -> None:
    data = bytearray(VALID[which])
    for offset, value in edits:
        data[offset % len(data)] = value
    documented_outcome(fuzz_pool, bytes(data))


@FUZZ
@given(st.integers(1, 70_000), st.integers(1, 70_000), st.integers(1, 2000))
def test_huge_canvases(fuzz_pool: DecodePool, width: int, height: int, frames: int) -> None:
    documented_outcome(fuzz_pool, png_claiming(width, height))
    documented_outcome(fuzz_pool, bomb_gif(min(width, 65535), min(height, 65535), min(frames, 300)))



def test_decode_workers_die_with_the_process_that_started_them() -> None:
    """A kill -9 of the proxy must not leave decode workers behind (one could be burning CPU on a bomb)."""
    import os
    import signal
    import time

    script = ("import os, sys\n"
              "from inference.decode_pool import DecodePool\n"
              "import time\n"
              "pool = DecodePool(1)\n"
              "print(pool.call(os.getpid), flush=True)\n"
              "pool.submit(time.sleep, 60)  # the worker is busy when its parent dies\n"
              "sys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        worker = int(parent.stdout.readline())
        time.sleep(0.5)
        assert worker != parent.pid and Path(f"/proc/{worker}").exists()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{worker}").exists() and \
                "Z" not in Path(f"/proc/{worker}/stat").read_text().split(")")[-1][:3]:
            time.sleep(0.1)
        alive = Path(f"/proc/{worker}").exists() and "Z" not in Path(f"/proc/{worker}/stat").read_text().split(
            ")")[-1][:3]
        assert not alive, f"decode worker {worker} outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
