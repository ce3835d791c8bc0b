"""Inference throughput, every path with the same decode (inference.media.decode, JPEG draft) and the same
models, measured in one run on this machine.

    .venv/bin/python benchmarks/inference_throughput.py [--pack DIR] [--images N]

(a) baseline: one image at a time in this process: decode, then the detector's models (batch of one);
    decode and models are timed separately;
(b) the in-process engine (decode workers, dynamic batching) with 16 concurrent screens, fp32;
(c) the same engine with the pack's checked int8 variants (nsfw and age; NudeNet stays fp32);
(d) `bucketguard inference serve` (a separate process) with 16 concurrent HTTP clients, fp32.
(b)/(a) is what batching and overlap give over one-by-one with the same work; (c)/(b) is what int8 gives
(target >= 2x). The workload mixes 2000x1500 JPEGs (scikit-image photographs upscaled) and small PNGs.
Without --pack it builds the nsfw-age pack with its int8 variants into the cache, from the pinned wheels.
No GPU here: the GPU figures (provider, fp16 on/off) are not produced by this run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.detectors import load_detector
from inference.engine import Engine
from inference.media import MediaLimits, decode
from inference.packs import load_pack
from inference.runtime import RuntimeOptions
from proxy.demo.servers import free_port

SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "retina", "horse")


def workload(count: int) -> list[tuple[bytes, str]]:
    images = []
    for index in range(count):
        array = getattr(skimage.data, SOURCES[index % len(SOURCES)])()
        if array.dtype != np.uint8:
            array = (array / max(float(array.max()), 1) * 255).astype(np.uint8)
        image = Image.fromarray(array).convert("RGB")
        buffer = io.BytesIO()
        if index % 2 == 0:
            image.resize((2000, 1500), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=88)
            images.append((buffer.getvalue(), "image/jpeg"))
        else:
            image.resize((320, 240)).save(buffer, "PNG")
            images.append((buffer.getvalue(), "image/png"))
    return images


def baseline(pack: Path, images: list[tuple[bytes, str]]) -> tuple[float, float, float]:
    """(images/s, decode ms per image, models ms per image): same decode and models as the engine, one by one."""
    detector = load_detector(load_pack(pack), RuntimeOptions(provider="cpu"))
    limits = MediaLimits()
    decode_s = models_s = 0.0
    for data, mime in images:
        started = time.perf_counter()
        media = decode(data, mime, limits, detector.input_size)
        decoded = time.perf_counter()
        detector.run(media.frames)
        decode_s += decoded - started
        models_s += time.perf_counter() - decoded
    return len(images) / (decode_s + models_s), decode_s / len(images) * 1000, models_s / len(images) * 1000


def in_process(pack: Path, images: list[tuple[bytes, str]], clients: int, options: RuntimeOptions) -> float:
    async def run() -> float:
        engine = Engine.from_packs([pack], options, max_batch=16, max_wait_ms=10)
        try:
            queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
            for data, mime in images[:8]:
                await engine.screen(data, mime)  # warm-up
            for item in images:
                queue.put_nowait(item)

            async def worker() -> None:
                while not queue.empty():
                    data, mime = queue.get_nowait()
                    await engine.screen(data, mime)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return len(images) / (time.perf_counter() - started)
        finally:
            await engine.close()

    return asyncio.run(run())


async def through_service(endpoint: str, token: str, images: list[tuple[bytes, str]], clients: int) -> float:
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    for item in images:
        queue.put_nowait(item)
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        async def worker() -> None:
            while not queue.empty():
                data, mime = queue.get_nowait()
                response = await client.post(f"{endpoint}/v1/screen", content=data, headers={"Content-Type": mime})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return len(images) / (time.perf_counter() - started)


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", help="pack folder (default: build nsfw-age into the cache)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    if args.pack:
        pack = Path(args.pack)
    else:
        from inference.export.nsfw_age import build
        from inference.export.wheels import cache_dir

        pack = cache_dir().parent / "packs" / "nsfw-age-int8"
        if not (pack / "manifest.json").exists():
            build(pack, int8=True)
    images = workload(args.images)
    print(f"pack {load_pack(pack).name}; {len(images)} images ({sum(len(d) for d, _ in images) / 1e6:.1f} MB), "
          f"half 2000x1500 JPEG, half 320x240 PNG; {os.cpu_count()} CPU cores")
    base, decode_ms, models_ms = baseline(pack, images)
    engine_fp32 = in_process(pack, images, args.clients, RuntimeOptions(provider="cpu"))
    has_int8 = any(load_pack(pack).int8_path(role) for role in load_pack(pack).models)
    engine_int8 = in_process(pack, images, args.clients, RuntimeOptions(provider="cpu", int8=True)) if has_int8 else 0

    token, port = "bench-token", free_port()
    service = subprocess.Popen([sys.executable, "-m", "proxy.cli", "inference", "serve", "--pack", str(pack),
                                "--listen", f"127.0.0.1:{port}", "--token", token, "--provider", "cpu",
                                "--max-batch", "16", "--max-wait-ms", "10"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{endpoint}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError("the inference service did not start")
            time.sleep(0.2)
        asyncio.run(through_service(endpoint, token, images[:16], args.clients))  # warm-up
        served = asyncio.run(through_service(endpoint, token, images, args.clients))
        metrics = httpx.get(f"{endpoint}/metrics").text
        mean_batch = [line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("bucketguard_inference_mean_batch{")]
        peak = vm_hwm_mib(service.pid)
    finally:
        service.terminate()
        service.wait(timeout=20)
    print(f"{'path':62} {'images/s':>10}")
    print(f"{'(a) baseline: same decode and models, one image at a time':62} {base:10.1f}")
    print(f"{'    decode ' + f'{decode_ms:.1f} ms/image, models ' + f'{models_ms:.1f} ms/image':62}")
    print(f"{'(b) in-process engine, fp32, ' + str(args.clients) + ' concurrent screens':62} {engine_fp32:10.1f}")
    if has_int8:
        print(f"{'(c) in-process engine, int8 variants, same concurrency':62} {engine_int8:10.1f}")
    print(f"{'(d) service over HTTP, fp32, ' + str(args.clients) + ' clients':62} {served:10.1f}")
    print(f"batching and overlap, (b)/(a): {engine_fp32 / base:.2f}x; service (d)/(a): {served / base:.2f}x; "
          f"mean frames per model run in the service: {', '.join(mean_batch)}; service peak RSS: {peak:.0f} MiB")
    if has_int8:
        print(f"int8 vs fp32 engine, (c)/(b): {engine_int8 / engine_fp32:.2f}x (target >= 2x); int8 checks: "
              f"{load_pack(pack).source.get('int8')}")
    print("GPU: not run (no GPU on this machine)")


if __name__ == "__main__":
    main()
