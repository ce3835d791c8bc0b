"""The in-process engine's speed work, held to the behaviour it must keep: batches run one per core at once on
single-threaded sessions, every caller of a failed or closed batch hears of it, and the cheaper preprocessing
gives the models bit for bit the inputs of the reference pipelines (so the same signals)."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from inference.batcher import Batcher, QueueFull
from inference.detectors import load_detector
from inference.detectors.base import to_tensor
from inference.engine import MAX_DEFAULT_WORKERS, Engine
from inference.packs import ModelSpec, load_pack
from inference.runtime import RuntimeOptions, usable_cores


def reference_tensor(images: list[Image.Image], spec: ModelSpec) -> np.ndarray:
    """The per-pixel float32 arithmetic, restated: (pixel * scale - mean) / std after the colour order."""
    batch = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    if spec.colour == "BGR":
        batch = batch[..., ::-1]
    batch = (batch * np.float32(spec.scale) - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(
        spec.std, dtype=np.float32)
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)


def every_value_image(width: int, height: int, seed: int) -> Image.Image:
    """Every channel takes all 256 values (in a different order per channel), the rest random."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    flat = pixels.reshape(-1, 3)
    for channel in range(3):
        flat[:256, channel] = rng.permutation(256)
    return Image.fromarray(pixels)


SPECS = {
    "open_nsfw": ModelSpec("m", "x", ("y",), (224, 224), "NHWC", "BGR", 1.0, (104.0, 117.0, 123.0)),
    "nudenet": ModelSpec("m", "x", ("y",), (40, 32), "NCHW", "RGB", 1 / 255),
    "age": ModelSpec("m", "x", ("y",), (64, 64), "NCHW", "RGB", 0.00390625, (0.4796171796875, 0.45703515234375,
                                                                              0.40741405078125)),
    "clip": ModelSpec("m", "x", ("y",), (24, 20), "NCHW", "RGB", 1 / 255, (0.48145466, 0.4578275, 0.40821073),
                      (0.26862954, 0.26130258, 0.27577711)),
    "bgr_nchw_std": ModelSpec("m", "x", ("y",), (17, 19), "NCHW", "BGR", 0.5, (1.5, -2.0, 0.25), (3.0, 0.7, 1.1)),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_to_tensor_is_the_per_pixel_arithmetic_bit_for_bit(name: str) -> None:
    spec = SPECS[name]
    images = [every_value_image(*spec.size, seed) for seed in range(3)]
    images.append(images[0].convert("L"))  # other modes are converted to RGB first
    images.append(images[1].convert("RGBA"))
    got, expected = to_tensor(images, spec), reference_tensor(images, spec)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # same bits (signed zeros included)
    with pytest.raises(ValueError):
        to_tensor([images[0], images[0].resize((spec.size[0] + 1, spec.size[1]))], spec)


def photo(name: str) -> Image.Image:
    array = getattr(skimage.data, name)()
    if array.dtype != np.uint8:
        array = (array.astype(np.float64) / max(float(array.max()), 1) * 255).astype(np.uint8)
    return Image.fromarray(array)


def reference_nsfw_age_inputs(frame: Image.Image, nsfw: ModelSpec, parts: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """open_nsfw: 256 bilinear, centre 224, a JPEG round trip, BGR minus mean; NudeNet: padded square at 320."""
    frame = frame.convert("RGB")
    crop = frame.resize((256, 256), Image.Resampling.BILINEAR).crop((16, 16, 240, 240))
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG")
    buffer.seek(0)
    side = max(frame.size)
    square = Image.new("RGB", (side, side))
    square.paste(frame, (0, 0))
    return (reference_tensor([Image.open(buffer).convert("RGB")], nsfw)[0],
            reference_tensor([square.resize(parts.size, Image.Resampling.BILINEAR)], parts)[0])


def test_nsfw_age_inputs_and_signals_are_unchanged(nsfw_age_pack_path: Path) -> None:
    """The detector's inputs equal the reference pipeline's bit for bit (colour, grey and alpha frames, landscape
    and portrait); and the engine's single-threaded sessions give the signals of a default session."""
    pack = load_pack(nsfw_age_pack_path)
    detector = load_detector(pack, RuntimeOptions("cpu"))
    frames = [photo("astronaut"), photo("camera"), photo("coffee").convert("RGBA"),
              photo("chelsea").transpose(Image.Transpose.TRANSPOSE), photo("rocket").resize((97, 301))]
    for frame in frames:
        prepared = detector.prepare(frame)
        nsfw, parts = reference_nsfw_age_inputs(frame, pack.models["nsfw"], pack.models["parts"])
        assert np.array_equal(prepared.nsfw, nsfw) and np.array_equal(prepared.parts, parts)
        assert prepared.back_scale == max(frame.size) / 320
    single_threaded = load_detector(pack, RuntimeOptions("cpu", intra_op_threads=1))
    default, engine_like = detector.run(frames), single_threaded.run(frames)
    for a, b in zip(default, engine_like, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == pytest.approx(b[name], abs=1e-5), (name, a, b)


# ---- the engine's sizing -------------------------------------------------------------------------------------

def test_engine_runs_single_threaded_sessions_one_batch_per_core(test_pack_path: Path) -> None:
    async def scenario() -> None:
        engine = Engine.from_packs([test_pack_path], RuntimeOptions("cpu"))
        detector = engine.detectors[0]
        assert detector.session.get_session_options().intra_op_num_threads == 1
        assert engine.batchers[0].workers == min(usable_cores(), MAX_DEFAULT_WORKERS)
        await engine.close()
        threaded = Engine.from_packs([test_pack_path], RuntimeOptions("cpu", intra_op_threads=2))
        assert threaded.detectors[0].session.get_session_options().intra_op_num_threads == 2
        assert threaded.batchers[0].workers == max(1, min(usable_cores() // 2, MAX_DEFAULT_WORKERS))
        await threaded.close()
        fixed = Engine.from_packs([test_pack_path], RuntimeOptions("cpu"), infer_workers=3)
        assert fixed.batchers[0].workers == 3
        await fixed.close()

    asyncio.run(scenario())


# ---- the batcher ---------------------------------------------------------------------------------------------

def test_batcher_runs_one_batch_per_worker_at_once() -> None:
    """Two workers: two batches are inside the model call together (a barrier of two is passed); one worker:
    never two at once, and the queued items then go together in the next batch."""
    barrier = threading.Barrier(2, timeout=60)

    def meet(items: list[int]) -> list[int]:
        barrier.wait()
        return [item * 10 for item in items]

    async def two_workers() -> None:
        batcher: Batcher[int, int] = Batcher(meet, max_batch=1, max_wait_ms=0, workers=2)
        assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [10, 20]
        assert batcher.stats.batches == 2
        await batcher.close()

    asyncio.run(two_workers())

    running, most, gate, taken = [0], [0], threading.Event(), threading.Event()
    lock = threading.Lock()
    sizes: list[int] = []

    def count(items: list[int]) -> list[int]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            sizes.append(len(items))
        taken.set()
        gate.wait(60)
        with lock:
            running[0] -= 1
        return items

    async def one_worker() -> None:
        batcher: Batcher[int, int] = Batcher(count, max_batch=8, max_wait_ms=0, workers=1)
        first = asyncio.ensure_future(batcher.submit(0))
        assert await asyncio.to_thread(taken.wait, 60)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        assert batcher.queued == 5
        gate.set()
        assert await first == 0 and [await r for r in rest] == [1, 2, 3, 4, 5]
        await batcher.close()

    asyncio.run(one_worker())
    assert most[0] == 1 and sizes == [1, 5]


def test_a_failed_batch_fails_every_caller_and_close_fails_the_waiting() -> None:
    """Fail-closed: a model error reaches each caller of its batch (never a made-up result), and closing the
    batcher answers QueueFull to callers whose batch is running or still queued, instead of leaving them hanging."""
    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("model exploded")

    def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def failing() -> None:
        for run in (broken, short):
            batcher: Batcher[int, int] = Batcher(run, max_batch=4, max_wait_ms=50, workers=2)
            results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
            assert all(isinstance(r, RuntimeError) for r in results), results
            assert batcher.stats.batches == 0
            await batcher.close()

    asyncio.run(failing())

    gate, taken = threading.Event(), threading.Event()

    def stuck(items: list[int]) -> list[int]:
        taken.set()
        gate.wait(60)
        return items

    async def closing() -> None:
        batcher: Batcher[int, int] = Batcher(stuck, max_batch=1, max_wait_ms=0, workers=1)
        running = asyncio.ensure_future(batcher.submit(0))
        assert await asyncio.to_thread(taken.wait, 60)
        queued = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)
        await batcher.close()
        for waiting in (running, queued):
            with pytest.raises(QueueFull):
                await waiting
        gate.set()

    asyncio.run(closing())


def test_the_batching_window_counts_from_arrival_so_queued_work_runs_at_once() -> None:
    """Items that already waited longer than `max_wait_ms` behind a running batch go as soon as a worker frees:
    the next batch is formed at once and a later item is not held back to join it (a window counted from
    when the worker picked the first item up would have waited for it)."""
    gate, taken = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        batches.append(list(items))
        taken.set()
        gate.wait(60)
        return items

    async def scenario() -> None:
        batcher: Batcher[int, int] = Batcher(run, max_batch=8, max_wait_ms=100, workers=1)
        first = asyncio.ensure_future(batcher.submit(0))
        assert await asyncio.to_thread(taken.wait, 60)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.3)  # both are now older than the window (longer only makes it more so)
        gate.set()
        assert await first == 0  # by now the next batch is formed: the freed worker took the queue at once
        later = asyncio.ensure_future(batcher.submit(3))
        assert [await q for q in queued] == [1, 2] and await later == 3
        await batcher.close()

    asyncio.run(scenario())
    assert batches == [[0], [1, 2], [3]]
