"""Backfill rate against the detectors' own capacity, in one run.

    .venv/bin/python benchmarks/backfill_rate.py [--objects N]

(a) capacity: the in-process engine with the `test` pack screening the same objects at high concurrency,
    with no S3 and no database (the most the detectors can do here);
(b) `bucketguard scan`'s backfill over a real S3 server (moto in a separate process) holding those objects,
    with the whole pipeline (hashing, PDQ, cache, policy, checkpoints).
Target: (b) keeps the detectors at least 80% busy, i.e. (b) / (a) >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
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


def objects(count: int) -> list[bytes]:
    out = []
    for index in range(count):
        rng = np.random.default_rng(index)
        image = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        out.append(buffer.getvalue())
    return out


async def capacity(pack: Path, bodies: list[bytes]) -> float:
    engine = Engine.from_packs([pack])
    try:
        await asyncio.gather(*(engine.screen(b, "image/jpeg") for b in bodies[:32]))
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(64)

        async def one(body: bytes) -> None:
            async with semaphore:
                await engine.screen(body, "image/jpeg")

        await asyncio.gather(*(one(b) for b in bodies))
        return len(bodies) / (time.perf_counter() - started)
    finally:
        await engine.close()


async def backfill(config_path: Path, concurrency: int) -> tuple[float, int]:
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
    run = Backfill(db, upstream, pipeline, None, config.limits,
                   ScanOptions(CLIENT_BUCKET, config.real_bucket(CLIENT_BUCKET) or "", dry_run=True,
                               concurrency=concurrency))
    try:
        await run.run.open()
        started = time.perf_counter()
        await run.list_all()
        await run.process_all()
        seconds = time.perf_counter() - started
        report = await run.run.report()
    finally:
        if close:
            await close()
        await upstream.close()
        await db.close()
    return report["objects"] / seconds, report["objects"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
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
        engine_rate = asyncio.run(capacity(pack, bodies))
        scan_rate, count = asyncio.run(backfill(config, args.concurrency))
    finally:
        moto.stop()
    print(f"{count} objects (320x240 JPEG), pack {pack.name} in-process, moto upstream in its own process")
    print(f"(a) detector capacity, no S3, 64 in flight:       {engine_rate:8.1f} objects/s")
    print(f"(b) backfill scan, {args.concurrency} in flight, full pipeline: {scan_rate:8.1f} objects/s")
    print(f"detectors kept busy: {scan_rate / engine_rate:.0%} of capacity (target >= 80%)")


if __name__ == "__main__":
    main()
