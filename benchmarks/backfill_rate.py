"""Backfill rate against the detectors' own capacity and against a bare S3 read of the same bucket, in one run.

    .venv/bin/python benchmarks/backfill_rate.py [--objects N] [--pack PACK]

(a) capacity: the in-process engine with the pack screening the same objects, the same number in flight as (b) and (c),
    with no S3 and no database (the most the detectors can do here);
(b) bare read: a plain aiobotocore client listing the bucket and GETting every object, same concurrency
    (the most S3 gives here);
(c) `bucketguard scan`'s backfill over a real S3 server (moto in a separate process) holding those objects,
    with the whole pipeline (hashing, PDQ, cache, policy, leases, batched outcomes);
(d) the same scan shared by two scanners (each half the concurrency) through one database;
(e) the screening pipeline alone on the same bodies (hashing, PDQ, detectors, policy; no S3, no database),
    to tell the pipeline's own cost from the scan's.
(a), (b) and (c) run back to back `--rounds` times, (b) and (c) in turn first, (a) before or after them (a
machine shared with other work changes speed within a run): each ratio is the median of the rounds' paired ratios.
Targets: the test pack (cheap detectors): (c) >= 0.8 x (b); a real pack (nsfw-age): (c) >= 0.8 x min((a), (b)).
For (b) and (c) it also prints where the CPU went per object (Linux /proc): moto's process, this process (every
thread: the event loop, the engine's threads, the database's), and this process's other children (the decode
workers). On a CPU-bound box the scan's rate is about the cores over the sum.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from aiobotocore.config import AioConfig
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.engine import Engine
from inference.export.test_pack import build as build_test_pack
from proxy.app import build_detectors
from proxy.config import load_config
from proxy.demo.servers import CLIENT_BUCKET, start_moto_process
from proxy.demo.servers import write_proxy_config as write_config
from proxy.jobs.backfill import Backfill, ScanOptions


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as children:
                pids.extend(int(pid) for pid in children.read().split())
        except OSError:
            continue
    return pids


class CpuMeter:
    """CPU seconds between `start` and `stop` of moto's process, this process, and this process's other children
    (the decode workers; those that exited and were reaped in between count through RUSAGE_CHILDREN)."""

    def __init__(self, moto_pid: int) -> None:
        self.moto_pid = moto_pid
        self.spent = (0.0, 0.0, 0.0)
        self._started = (0.0, 0.0, 0.0)

    def _sample(self) -> tuple[float, float, float]:
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        others = sum(_proc_cpu(pid) for pid in _children() if pid != self.moto_pid)
        return _proc_cpu(self.moto_pid), time.process_time(), others + reaped.ru_utime + reaped.ru_stime

    def start(self) -> None:
        self._started = self._sample()

    def stop(self) -> None:
        self.spent = tuple(b - a for a, b in zip(self._started, self._sample(), strict=True))  # type: ignore[assignment]


def objects(count: int) -> list[bytes]:
    out = []
    for index in range(count):
        rng = np.random.default_rng(index)
        image = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        out.append(buffer.getvalue())
    return out


async def capacity(pack: Path, bodies: list[bytes], concurrency: int, meter: CpuMeter | None = None) -> float:
    engine = Engine.from_packs([pack])
    try:
        await asyncio.gather(*(engine.screen(b, "image/jpeg") for b in bodies[:32]))
        if meter:
            meter.start()
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)

        async def one(body: bytes) -> None:
            async with semaphore:
                await engine.screen(body, "image/jpeg")

        await asyncio.gather(*(one(b) for b in bodies))
        seconds = time.perf_counter() - started
        if meter:
            meter.stop()
        return len(bodies) / seconds
    finally:
        await engine.close()


async def pipeline_capacity(config_path: Path, bodies: list[bytes], concurrency: int) -> float:
    """The screening pipeline alone (hashing, PDQ of every orientation, detectors, policy; no S3, no database)."""
    from proxy.screening.hashlists import HashLists
    from proxy.screening.pipeline import Pipeline
    from proxy.screening.policy import load_policy
    from proxy.storage.spool import SpooledBody

    config = load_config(config_path)
    detectors, close = build_detectors(config)
    pipeline = Pipeline(policy=load_policy(config.screening.policy), hashlists=HashLists([], []), cache=None,
                        detectors=detectors, scan_timeout_s=120)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> None:
        async with semaphore:
            await pipeline.decide(SpooledBody.from_bytes(body), "image/jpeg", allow_defer=False)

    try:
        await asyncio.gather(*(one(b) for b in bodies[:32]))
        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return len(bodies) / (time.perf_counter() - started)
    finally:
        if close:
            await close()


async def bare_read(config_path: Path, concurrency: int, meter: CpuMeter | None = None) -> float:
    """List + GET every object with a plain aiobotocore client, `concurrency` GETs in flight."""
    from aiobotocore.session import get_session

    config = load_config(config_path)
    bucket = config.real_bucket(CLIENT_BUCKET) or ""
    session = get_session()
    async with session.create_client(
            "s3", endpoint_url=config.upstream.endpoint, region_name=config.upstream.region,
            aws_access_key_id=config.upstream.access_key, aws_secret_access_key=config.upstream.secret_key,
            config=AioConfig(s3={"addressing_style": "path"}, max_pool_connections=concurrency)) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def get(key: str) -> None:
            async with semaphore:
                response = await client.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as stream:
                    await stream.read()

        if meter:
            meter.start()
        started = time.perf_counter()
        tasks = []
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            tasks.extend(asyncio.create_task(get(item["Key"])) for item in page.get("Contents", []))
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
        if meter:
            meter.stop()
        return len(tasks) / seconds


async def backfill(config_path: Path, concurrency: int, scanners: int = 1,
                   warm: list[bytes] | None = None, meter: CpuMeter | None = None) -> tuple[float, int]:
    """`scanners` scanners sharing one run (one database), each with concurrency / scanners in flight. The
    decode processes are started (the pipeline screens `warm`, bytes not in the bucket) before the clock starts,
    as (a) and (e) are warmed: a scan of millions of objects does not pay that start-up per object."""
    from proxy.screening.cache import VerdictCache
    from proxy.screening.hashlists import HashLists
    from proxy.screening.pipeline import Pipeline
    from proxy.screening.policy import load_policy
    from proxy.state import Database
    from proxy.storage.upstream import Upstream

    config = load_config(config_path)
    db = Database(config.database.url)
    await db.migrate()
    upstream = Upstream(config.upstream, config.limits)
    await upstream.start()
    detectors, close = build_detectors(config)
    pipeline = Pipeline(policy=load_policy(config.screening.policy), hashlists=HashLists([], []),
                        cache=VerdictCache(db), detectors=detectors, scan_timeout_s=120)
    options = ScanOptions(CLIENT_BUCKET, config.real_bucket(CLIENT_BUCKET) or "", dry_run=True,
                          concurrency=max(1, concurrency // scanners))
    runs = [Backfill(db, upstream, pipeline, None, config.limits, options, owner=f"bench/{n}/{n}")
            for n in range(scanners)]
    try:
        if warm:  # through the pipeline, as the scan screens: every decode process it uses is started
            from proxy.storage.spool import SpooledBody

            await asyncio.gather(*(pipeline.decide(SpooledBody.from_bytes(body), "image/jpeg", allow_defer=False)
                                   for body in warm))
        if meter:
            meter.start()
        started = time.perf_counter()
        reports = await asyncio.gather(*(run.scan() for run in runs))
        seconds = time.perf_counter() - started
        if meter:
            meter.stop()
    finally:
        if close:
            await close()
        await upstream.close()
        await db.close()
    return reports[0]["objects"] / seconds, reports[0]["objects"]


def fresh_database(folder: Path) -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (folder / name).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=64,
                        help="objects in flight in (a), (b), (c) and (e) alike; (d) splits it between its two scanners")
    parser.add_argument("--rounds", type=int, default=3,
                        help="(a), (b), (c) measured this many times, back to back (a ratio: the median of the pairs)")
    parser.add_argument("--pack", help="a pack folder instead of the tiny `test` pack (e.g. nsfw-age)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bucketguard-backfill-bench-"))
    pack = Path(args.pack) if args.pack else build_test_pack(tmp / "test-pack")
    bodies = objects(args.objects)
    moto = start_moto_process()
    try:
        upstream = moto.server
        upstream.create_bucket("bench-media")
        client = upstream.client()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda item: client.put_object(Bucket="bench-media", Key=f"m/{item[0]:05d}.jpg",
                                                         Body=item[1], ContentType="image/jpeg"),
                          enumerate(bodies)))
        policy = tmp / "policy.toml"
        policy.write_text('[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\naction = "flag"\n')
        config = write_config(tmp, upstream, "bench-media", inference=f'mode = "in-process"\npacks = ["{pack}"]',
                              screening=f'policy = "{policy}"')
        pipeline_rate = asyncio.run(pipeline_capacity(config, bodies, args.concurrency))
        warm = objects(args.objects + 32)[args.objects:]  # other bytes: the verdict cache stays cold
        rounds: list[dict[str, float]] = []
        cpu: dict[str, list[tuple[float, float, float]]] = {"capacity": [], "read": [], "scan": []}
        count = 0
        for index in range(args.rounds):  # back to back: (a) (b) (c), then (c) (b) (a), ...
            rates: dict[str, float] = {}
            for which in ("capacity", "read", "scan") if index % 2 == 0 else ("scan", "read", "capacity"):
                meter = CpuMeter(moto.process.pid)
                if which == "capacity":
                    rates[which] = asyncio.run(capacity(pack, bodies, args.concurrency, meter))
                elif which == "read":
                    rates[which] = asyncio.run(bare_read(config, args.concurrency, meter))
                else:
                    fresh_database(tmp)  # every scan starts from an empty database (a cold verdict cache)
                    rates[which], count = asyncio.run(backfill(config, args.concurrency, warm=warm, meter=meter))
                cpu[which].append(tuple(seconds * 1000 / args.objects for seconds in meter.spent))  # type: ignore[arg-type]
            rounds.append(rates)
        fresh_database(tmp)
        shared_rate, _ = asyncio.run(backfill(config, args.concurrency, scanners=2, warm=warm))
    finally:
        moto.stop()

    def median(which: str) -> float:
        return statistics.median(r[which] for r in rounds)

    def paired(over: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(r["scan"] / over(r) for r in rounds)

    engine_rate, read_rate, scan_rate = median("capacity"), median("read"), median("scan")
    bound = min(engine_rate, read_rate)
    print(f"{count} objects (320x240 JPEG), pack {pack.name} in-process, moto upstream in its own process")
    print(f"(a) detector capacity, no S3, {args.concurrency} in flight, median:  {engine_rate:8.1f} objects/s")
    print(f"(b) bare read (list + GET), {args.concurrency} in flight, median:   {read_rate:8.1f} objects/s")
    print(f"(e) screening pipeline alone (hashes, PDQ, detectors), no S3/DB: {pipeline_rate:6.1f} objects/s")
    print(f"(c) backfill scan, {args.concurrency} in flight, full pipeline, median: {scan_rate:6.1f} objects/s")
    print(f"(d) two scanners sharing the run, {args.concurrency // 2} in flight each: {shared_rate:8.1f} objects/s")
    print("rounds (a) / (b) / (c): " + "; ".join(
        f"{r['capacity']:.1f} / {r['read']:.1f} / {r['scan']:.1f}" for r in rounds))
    print(f"scan / capacity (c)/(a): {paired(lambda r: r['capacity']):.2f}   "
          f"scan / bare read (c)/(b): {paired(lambda r: r['read']):.2f} "
          "(medians of the rounds' paired ratios; target >= 0.80, test pack)")
    print(f"scan / pipeline alone (c)/(e): {scan_rate / pipeline_rate:.2f}")
    totals = {}
    for which, label, parts in (("capacity", "(a) capacity", ((1, "engine process"), (2, "decode workers"))),
                                ("read", "(b) bare read", ((0, "moto"), (1, "reader"))),
                                ("scan", "(c) scan", ((0, "moto"), (1, "scanner process"), (2, "decode workers")))):
        medians = [statistics.median(spent[i] for spent in cpu[which]) for i in range(3)]
        totals[which] = sum(medians[i] for i, _ in parts)
        split = ", ".join(f"{name} {medians[i]:.2f}" for i, name in parts)
        print(f"CPU ms per object, {label} (medians of the rounds): {split}; total {totals[which]:.2f}")
    print(f"CPU per object (a)/(c): {totals['capacity'] / totals['scan']:.2f} (what (c)/(a) would be where both "
          "keep every core busy)")
    print(f"scan / min(capacity, bare read): {paired(lambda r: min(r['capacity'], r['read'])):.2f} "
          f"(median of the rounds' paired ratios; target >= 0.80)   shared scan / min: {shared_rate / bound:.2f}")


if __name__ == "__main__":
    main()
