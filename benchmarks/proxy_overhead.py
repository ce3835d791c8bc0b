"""The proxy's overhead, measured against the same S3 server directly, in one run.

    .venv/bin/python benchmarks/proxy_overhead.py [--requests N]

Starts moto's S3 server and `bucketguard serve` (allow-all screen) as separate processes on loopback, then
runs the same workload straight to the S3 server and through the proxy with one async HTTP client and
presigned URLs made in advance (so the client costs the same on both paths):
  - GET of 1 MiB objects at 16 concurrent clients: throughput ratio (target >= 0.8 of direct)
  - HEAD latency: p50 and p99, direct and through the proxy, and what the proxy adds (target <= 3 ms p50)
  - PUT of 256 KiB objects at 16 concurrent clients: throughput ratio (target >= 0.7 of direct)
  - the proxy's peak memory (VmHWM) during a 200 MiB multipart upload, against its configured buffer.
Fairness: the same client, objects, URLs signed in advance and concurrency on both paths; each round measures
direct and proxy back to back (the order flips every round) and the ratio is the median of those paired ratios,
so load from elsewhere on the machine, which drifts over seconds, falls on both sides of each pair alike.
The proxy process's own CPU time per request (user + system, from /proc) is printed too: it does not depend
on how busy the machine is. This machine is shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.demo.pictrs_client import PictrsClient
from proxy.demo.servers import CLIENT_BUCKET, CLIENTS, PICTRS_KEY, free_port, start_moto_process, wait_healthy
from proxy.demo.servers import write_proxy_config as write_config

MIB = 1024 * 1024
CONCURRENCY = 16


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def presigner(endpoint: str, key: str, secret: str):
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                          aws_secret_access_key=secret,
                          config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
    return lambda method, bucket, obj: client.generate_presigned_url(
        method, Params={"Bucket": bucket, "Key": obj}, ExpiresIn=3600)


async def run_concurrent(urls: list[str], method: str, body: bytes | None = None) -> tuple[float, int]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    moved = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal moved
            while not queue.empty():
                url = queue.get_nowait()
                if method == "GET":
                    response = await client.get(url)
                    moved += len(response.content)
                else:
                    response = await client.put(url, content=body)
                    moved += len(body or b"")
                if response.status_code not in (200, 206):
                    raise RuntimeError(f"{method} {url[:80]} -> {response.status_code} {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started, moved


async def head_latencies(urls: list[str]) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls:
            started = time.perf_counter()
            response = await client.head(url)
            out.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"HEAD -> {response.status_code}")
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per throughput measurement")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per measurement")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bucketguard-bench-"))
    moto = start_moto_process()
    upstream = moto.server
    proxy_process = None
    try:
        real_bucket = "bench-media"
        upstream.create_bucket(real_bucket)
        buffer_bytes = 8 * MIB
        config = write_config(tmp, upstream, real_bucket,
                              limits=f"memory_buffer_bytes = {buffer_bytes}\nmax_object_bytes = {400 * MIB}")
        config.write_text(config.read_text().replace('memory_buffer_bytes = 1048576\n', ''))
        proxy_port = free_port()
        log = (tmp / "proxy.log").open("wb")
        # The proxy with the allow-all seam (no screening pipeline), in its own process, as `serve` runs it.
        launcher = ("import sys, uvicorn; from proxy.config import load_config; "
                    "from proxy.front.gateway import create_app; "
                    "uvicorn.run(create_app(load_config(sys.argv[1])), host='127.0.0.1', port=int(sys.argv[2]), "
                    "log_level='warning', access_log=False, loop='uvloop', http='httptools')")
        proxy_process = subprocess.Popen([sys.executable, "-c", launcher, str(config), str(proxy_port)],
                                         stdout=log, stderr=subprocess.STDOUT)
        proxy_endpoint = f"http://127.0.0.1:{proxy_port}"
        wait_healthy(proxy_endpoint, proxy_process, log=tmp / "proxy.log")

        direct_sign = presigner(upstream.endpoint, "testing", "testing")
        proxy_sign = presigner(proxy_endpoint, PICTRS_KEY, CLIENTS[PICTRS_KEY])
        s3 = upstream.client()
        objects = [f"get/{i}.bin" for i in range(32)]
        for key in objects:
            s3.put_object(Bucket=real_bucket, Key=key, Body=os.urandom(MIB))
        s3.put_object(Bucket=real_bucket, Key="head.bin", Body=os.urandom(1000))

        results: dict[str, dict[str, list[float]]] = {"GET": {"direct": [], "proxy": []},
                                                      "PUT": {"direct": [], "proxy": []}}
        proxy_cpu = {"GET": 0.0, "PUT": 0.0}
        put_body = os.urandom(256 * 1024)
        paths = [("direct", direct_sign, real_bucket), ("proxy", proxy_sign, CLIENT_BUCKET)]
        for round_number in range(args.rounds):
            for method in ("GET", "PUT"):
                for path, sign, bucket in paths if round_number % 2 == 0 else paths[::-1]:
                    if method == "GET":
                        urls = [sign("get_object", bucket, objects[i % len(objects)]) for i in range(args.requests)]
                    else:
                        urls = [sign("put_object", bucket, f"put/{path}/{round_number}/{i}.bin")
                                for i in range(args.requests)]
                    cpu_before = cpu_seconds(proxy_process.pid)
                    seconds, moved = asyncio.run(run_concurrent(urls, method, put_body if method == "PUT" else None))
                    if path == "proxy":
                        proxy_cpu[method] += cpu_seconds(proxy_process.pid) - cpu_before
                    results[method][path].append(moved / MIB / seconds if method == "GET" else args.requests / seconds)

        head_direct = asyncio.run(head_latencies([direct_sign("head_object", real_bucket, "head.bin")] * 300))
        head_proxy = asyncio.run(head_latencies([proxy_sign("head_object", CLIENT_BUCKET, "head.bin")] * 300))

        before = vm_hwm_kib(proxy_process.pid)
        client = PictrsClient(proxy_endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], path_style=True,
                              generation="presigned", timeout_s=300)
        video = os.urandom(200 * MIB)
        started = time.perf_counter()
        client.put_multipart("big/video.mp4", video, "video/mp4", concurrency=4)
        multipart_seconds = time.perf_counter() - started
        after = vm_hwm_kib(proxy_process.pid)
        assert s3.head_object(Bucket=real_bucket, Key="big/video.mp4")["ContentLength"] == len(video)

        get_d, get_p = statistics.median(results["GET"]["direct"]), statistics.median(results["GET"]["proxy"])
        put_d, put_p = statistics.median(results["PUT"]["direct"]), statistics.median(results["PUT"]["proxy"])
        paired = {method: [p / d for p, d in zip(results[method]["proxy"], results[method]["direct"], strict=True)]
                  for method in results}
        print(f"bucketguard proxy overhead ({args.rounds} alternating rounds, medians; "
              f"{args.requests} requests each; {CONCURRENCY} concurrent clients; upstream: moto)")
        print(f"{'measure':44} {'direct':>12} {'proxy':>12} {'ratio':>8}  target")
        print(f"{'GET 1 MiB objects (MiB/s)':44} {get_d:12.1f} {get_p:12.1f} "
              f"{statistics.median(paired['GET']):8.2f}  >= 0.80")
        print(f"{'PUT 256 KiB objects, allow-all (objects/s)':44} {put_d:12.1f} {put_p:12.1f} "
              f"{statistics.median(paired['PUT']):8.2f}  >= 0.70")
        hd50, hp50 = pct(head_direct, 50), pct(head_proxy, 50)
        hd99, hp99 = pct(head_direct, 99), pct(head_proxy, 99)
        print(f"{'HEAD latency p50 (ms)':44} {hd50:12.2f} {hp50:12.2f} {'+%.2f ms' % (hp50 - hd50):>8}  "
              "<= +3 ms")
        print(f"{'HEAD latency p99 (ms)':44} {hd99:12.2f} {hp99:12.2f} {'+%.2f ms' % (hp99 - hd99):>8}")
        for method in ("GET", "PUT"):
            print(f"{method} ratio of each round (proxy / direct, back to back): "
                  + " ".join(f"{ratio:.2f}" for ratio in paired[method]))
        per_request = {m: proxy_cpu[m] * 1000 / (args.rounds * args.requests) for m in proxy_cpu}
        print(f"proxy CPU time per request (user + system): GET 1 MiB {per_request['GET']:.2f} ms, "
              f"PUT 256 KiB {per_request['PUT']:.2f} ms")
        print(f"200 MiB multipart upload through the proxy: {multipart_seconds:.1f} s; proxy peak RSS (VmHWM) "
              f"{before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after "
              f"(+{(after - before) / 1024:.0f} MiB; buffer {buffer_bytes // MIB} MiB per body, 4 parts in flight)")
    finally:
        if proxy_process is not None:
            proxy_process.terminate()
            proxy_process.wait(timeout=15)
        moto.stop(timeout=15)


if __name__ == "__main__":
    main()
