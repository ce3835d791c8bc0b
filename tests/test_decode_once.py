"""One decode-pool task per upload: the task that hashes the frames (PDQ, the test image's distance) also decodes
the bytes for the in-process engine, exactly as the engine's own decode would, so the models run without a second
decode. Held to: the same frames and signals as the engine screening the bytes itself, every sampled frame
screened, and nothing undecodable, stopped or busy ever screened as clean."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.decode_pool import DecodeLimits, DecodePool, shared_pool
from inference.engine import Engine
from inference.media import DecodeSpec, Media, MediaLimits, decode
from proxy.screening.hashing import frame_hashes_here, frames_and_media, frames_and_media_here
from proxy.screening.hashlists import HashLists
from proxy.screening.pipeline import Pipeline
from proxy.screening.policy import load_policy
from proxy.storage.spool import SpooledBody


def still(fmt: str, size: tuple[int, int] = (320, 240), seed: int = 1, **kwargs: object) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(size)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """A JPEG whose EXIF says 'rotate 90': both decodes must apply it."""
    image = Image.open(io.BytesIO(still("JPEG", (300, 200), seed=2)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def animation(frames: int) -> bytes:
    """A GIF whose frames all differ: the engine samples 8 of them, PDQ hashes every one."""
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((96, 72))
              for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=40)
    return buffer.getvalue()


MEDIA = {
    "jpeg": lambda: still("JPEG", quality=85),
    "jpeg-exif-rotated": rotated_jpeg,
    "png": lambda: still("PNG", (200, 150)),
    "webp": lambda: still("WEBP", (256, 256)),
    "gif-20-frames": lambda: animation(20),
}


@pytest.fixture
def engine(test_pack_path: Path) -> Iterator[Engine]:
    """One per test: an engine's batchers belong to the event loop that first used them."""
    engine = Engine.from_packs([test_pack_path])
    yield engine
    asyncio.run(engine.close())


def pipeline_for(engine: Engine) -> Pipeline:
    return Pipeline(policy=load_policy(None), hashlists=HashLists([], []), cache=None, detectors=engine,
                    scan_timeout_s=60)


@pytest.mark.parametrize("name", sorted(MEDIA))
def test_the_frames_task_decodes_for_the_engine_exactly_as_the_engine_does(engine: Engine, name: str) -> None:
    data = MEDIA[name]()
    hashes, media = frames_and_media_here(data, engine.decode_spec)
    own = decode(data, None, engine.media_limits, engine.target_size)
    assert hashes == frame_hashes_here(data)
    assert media is not None and not media.undecodable and media.kind == own.kind
    assert [(f.mode, f.size, f.tobytes()) for f in media.frames] == [(f.mode, f.size, f.tobytes())
                                                                       for f in own.frames]
    if name == "gif-20-frames":
        assert len(hashes.frames) == 20 and len(media.frames) == 8  # PDQ: every frame; the engine: its 8


@pytest.mark.parametrize("name", sorted(MEDIA))
def test_one_decode_task_per_upload_and_the_signals_of_the_engine_itself(engine: Engine, name: str) -> None:
    data = MEDIA[name]()

    async def run() -> tuple:
        pool, pipeline = shared_pool(), pipeline_for(engine)  # (a first pipeline hashes the test image once)
        tasks, engine_tasks, runs = pool.submitted, engine.decode_pool.submitted, engine.model_runs
        decision = await pipeline.decide(SpooledBody.from_bytes(data), "image/jpeg", allow_defer=False)
        counts = (pool.submitted - tasks, engine.decode_pool.submitted - engine_tasks, engine.model_runs - runs)
        direct = await engine.screen(data, None)  # the engine decoding in its own pool, as the service does
        return decision, counts, direct

    decision, (tasks, engine_tasks, runs), direct = asyncio.run(run())
    assert (tasks, engine_tasks) == (1, 0), "one decode-pool task, and none in the engine's own pool"
    assert runs >= 1 and decision.step == "detectors"
    assert not direct.undecodable
    assert decision.signals["frames"] == direct.signals["frames"] == direct.frames
    assert decision.signals == pytest.approx(direct.signals, abs=1e-5)


def test_undecodable_bytes_get_no_detector_frames_and_never_land_clean(engine: Engine) -> None:
    truncated = still("JPEG")[:300]

    async def run() -> tuple:
        runs = engine.model_runs
        decision = await pipeline_for(engine).decide(SpooledBody.from_bytes(truncated), "image/jpeg",
                                                     allow_defer=False)
        decoded = await engine.screen_decoded(Media(undecodable=True, reason="corrupt"))
        return decision, engine.model_runs - runs, decoded

    hashes, media = frames_and_media_here(truncated, engine.decode_spec)
    assert not hashes.decodable and media is None
    decision, runs, decoded = asyncio.run(run())
    assert decision.action != "allow" and decision.signals == {"undecodable": 1.0} and runs == 0
    assert decoded.undecodable and decoded.signals == {"undecodable": 1.0} and decoded.reason == "corrupt"


def test_a_task_stopped_at_its_limit_gives_no_detector_frames(engine: Engine) -> None:
    """The one task is killed at its wall deadline: the hashes say stopped (undecodable), and no frames exist
    for the detectors to be screened as clean."""
    big = still("PNG", (3000, 3000), seed=3)
    pool = DecodePool(1, DecodeLimits(wall_seconds=0.01))
    try:
        hashes, media = asyncio.run(frames_and_media(big, engine.decode_spec, pool))
    finally:
        pool.close()
    assert hashes.over_budget and hashes.stopped and not hashes.decodable and media is None


def test_a_busy_pool_gives_no_detector_frames(engine: Engine) -> None:
    pool = DecodePool(1, DecodeLimits(wall_seconds=30, max_waiting=0))
    big = still("PNG", (2000, 2000), seed=4)

    async def run() -> list:
        return await asyncio.gather(*(frames_and_media(big, engine.decode_spec, pool) for _ in range(3)))

    try:
        results = asyncio.run(run())
    finally:
        pool.close()
    busy = [(hashes, media) for hashes, media in results if hashes.busy]
    assert busy and all(media is None and not hashes.decodable for hashes, media in busy)


def test_a_peers_attestations_found_early_skip_the_detectors_decode(engine: Engine) -> None:
    """When a later step's early lookup has already found something (a peer's attestations), the one task hashes
    the frames but decodes nothing for the detectors, which may not run; with nothing found it decodes for them."""
    from proxy.screening.facts import Facts

    async def detector_media(found: object) -> Media | None:
        facts = Facts(SpooledBody.from_bytes(MEDIA["png"]()), "image/png", cache=None, policy_version="v",
                      allow_defer=False, detector_decode=engine.decode_spec)

        async def early() -> object:
            return found

        facts.early["federation"] = asyncio.get_running_loop().create_task(early())
        await asyncio.sleep(0)  # the early lookup answers before the decoding starts
        frames = await facts.frames()
        assert frames.decodable and len(frames.frames) == 1  # the PDQ hashes are there either way
        return facts.detector_media

    assert asyncio.run(detector_media([{"peer": "a", "att_id": "1"}])) is None
    assert asyncio.run(detector_media(None)) is not None
    assert asyncio.run(detector_media([])) is not None


class _Unreadable:
    """Pickles in a worker, fails to unpickle in the parent (int("not a number"))."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return int, ("not a number",)


def unreadable_reply() -> _Unreadable:
    return _Unreadable()


def test_the_pool_sends_large_bodies_wears_out_workers_and_never_runs_a_cancelled_task(tmp_path: Path) -> None:
    """The decode pool's own transport (one pipe per worker): a body over what the caller writes itself goes by the
    sender thread and comes back decoded as in-process; a worker is replaced after max_tasks; a waiting task
    cancelled never runs, a running one cancelled is killed with its worker; a reply that cannot be read fails
    its own task only; nothing is left in flight."""
    import os
    import time

    pool = DecodePool(1, DecodeLimits(max_tasks=2, wall_seconds=60))
    try:
        big = still("PNG", (1500, 1500), seed=5)
        assert len(big) > DecodePool.INLINE_BYTES
        assert pool.call(frame_hashes_here, big) == frame_hashes_here(big)
        first = pool.call(os.getpid)  # its second task: worn out after it
        second = pool.call(os.getpid)
        running = pool.submit(time.sleep, 60)
        marker = tmp_path / "ran"
        waiting = pool.submit(os.mkdir, str(marker))
        assert waiting.cancel() and running.cancel()
        third = pool.call(os.getpid)
        assert len({first, second, third, os.getpid()}) == 4
        with pytest.raises(ValueError):
            pool.call(unreadable_reply)
        assert pool.call(os.getpid) not in {first, second, third}
        assert not marker.exists() and pool.in_flight == 0 and pool.submitted == 8
    finally:
        pool.close()


@pytest.mark.parametrize("name, size, decodes", [("small-jpeg", (320, 240), 0), ("small-png", (500, 300), 0),
                                                 ("large-jpeg", (1400, 1000), 1), ("past-one-target", (600, 400), 1)])
def test_a_small_still_is_decoded_once_for_both_and_every_frame_is_the_engines_own(
        monkeypatch: pytest.MonkeyPatch, name: str, size: tuple[int, int], decodes: int) -> None:
    """A still no decode reduces (at most twice both targets' larger side) gives PDQ and the detectors the same
    frame from one decode; a larger one is decoded for the detectors again. Either way the frames are exactly
    what the engine's own decode gives (nsfw-age's 320 px target here; PDQ's is 256, so 600 px is past it)."""
    spec = DecodeSpec(MediaLimits(), (320, 320))
    data = still("PNG" if name == "small-png" else "JPEG", size)
    calls = []
    monkeypatch.setattr(DecodeSpec, "decode", lambda self, body: calls.append(body) or decode(body, None, self.limits,
                                                                                               self.target))
    hashes, media = frames_and_media_here(data, spec)
    own = decode(data, None, spec.limits, spec.target)
    assert len(calls) == decodes and hashes == frame_hashes_here(data)
    assert media is not None and [(f.mode, f.size, f.tobytes()) for f in media.frames] == [
        (f.mode, f.size, f.tobytes()) for f in own.frames]
