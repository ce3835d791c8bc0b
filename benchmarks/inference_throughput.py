"""Inference throughput: a naive baseline against the service with batching, in one run on this machine.

    .venv/bin/python benchmarks/inference_throughput.py [--pack DIR] [--images N]

(a) naive: full-size Pillow decode, one image per model call, one at a time, in this process;
(b) `bucketguard inference serve` (a separate process) with 16 concurrent HTTP clients: decode with JPEG
    draft in worker threads, frames batched across requests.
The workload is a mix of 2000x1500 JPEGs (scikit-image photographs upscaled) and small PNGs. Prints
images/second for both, the ratio (target >= 2x on a 2-core CPU) and the service's peak memory (VmHWM).
Without --pack it builds the nsfw-age pack (the real workload) into the cache, from the pinned wheels.
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


def naive(pack: Path, images: list[tuple[bytes, str]]) -> float:
    detector = load_detector(load_pack(pack), RuntimeOptions(provider="cpu"))
    started = time.perf_counter()
    for data, _ in images:
        detector.run([Image.open(io.BytesIO(data)).convert("RGB")])
    return len(images) / (time.perf_counter() - started)


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

        pack = cache_dir().parent / "packs" / "nsfw-age"
        if not (pack / "manifest.json").exists():
            build(pack)
    images = workload(args.images)
    print(f"pack {load_pack(pack).name}; {len(images)} images ({sum(len(d) for d, _ in images) / 1e6:.1f} MB), "
          f"half 2000x1500 JPEG, half 320x240 PNG; {os.cpu_count()} CPU cores")
    baseline = naive(pack, images)

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
    print(f"{'path':58} {'images/s':>10}")
    print(f"{'(a) naive: full decode, batch 1, sequential':58} {baseline:10.1f}")
    print(f"{'(b) service: draft decode, dynamic batching, ' + str(args.clients) + ' clients':58} {served:10.1f}")
    print(f"ratio (b)/(a): {served / baseline:.2f}x (target >= 2x); mean frames per model run: "
          f"{', '.join(mean_batch)}; service peak RSS (VmHWM): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
