"""Two `bucketguard serve` processes on one PostgreSQL behind a round-robin balancer (tests/support/balancer.py),
taking pict-rs-style uploads of both generations (proxy/demo/pictrs_client.py), multipart parts spread across
both; one proxy is killed with -9 mid-run.

Judged by what is in the real bucket on moto and in the shared database afterwards: every upload that was
answered 200 is there with its exact bytes, nothing refused is there, no staging object or open multipart
upload is left visible, each refused upload has one quarantine record (a retried one at most one per request a proxy
took), the evidence chain written by both processes verifies, and the migrations were applied once although both
processes started at the same moment on an empty database.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import skimage.data
from PIL import Image
from sqlalchemy import select

from proxy.demo.pictrs_client import PictrsClient, PictrsError
from proxy.evidence import log as evidence
from proxy.evidence.quarantine import quarantine_items
from proxy.screening.testimage import generate_png
from proxy.state import MIGRATION_MODULES, Database, schema_migrations
from tests.support.balancer import start_balancer
from tests.support.moto import S3Server
from tests.support.postgres import PostgresServer
from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY, new_bucket, start_subprocess, write_config

SINGLE = 48
PART = 5 * 1024 * 1024


def small_uploads() -> list[tuple[str, bytes, str, bool]]:
    """(key, bytes, content type, is a hit): photographs, and the test image re-encoded (a hit)."""
    photo = Image.fromarray(skimage.data.chelsea()).convert("RGB").resize((96, 72))
    test = Image.open(io.BytesIO(generate_png())).convert("RGB")
    out = []
    for index in range(SINGLE):
        buffer = io.BytesIO()
        hit = index % 8 == 0
        if hit:
            test.resize((400 - index, 300 - index)).save(buffer, "WEBP", quality=70)
        else:
            image = photo.copy()
            image.putpixel((index, index % 72), (index, 3, 3))
            image.save(buffer, "JPEG", quality=85)
        out.append((f"{index:02x}/aa/{index:04d}.{'webp' if hit else 'jpg'}", buffer.getvalue(),
                    "image/webp" if hit else "image/jpeg", hit))
    return out


def big_upload(seed: int) -> bytes:
    """A PNG of noise, over two parts long."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (2000, 1900), rng.randbytes(2000 * 1900 * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    assert len(buffer.getvalue()) > 2 * PART
    return buffer.getvalue()


async def _state(url: str) -> tuple[list[str], Counter[str], bool]:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            ids = list((await conn.execute(select(schema_migrations.c.id))).scalars())
            keys = Counter((await conn.execute(select(quarantine_items.c.key))).scalars())
        return ids, keys, (await evidence.verify(db.engine)).ok
    finally:
        await db.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_proxies_on_one_postgres_one_killed_mid_run(moto_server: S3Server, postgres_server: PostgresServer,
                                                        test_pack_path: Path, tmp_path: Path) -> None:
    bucket = new_bucket(moto_server)
    url = postgres_server.url(postgres_server.create_database("replicas"))
    policy = tmp_path / "policy.toml"  # the test pack's random weights are no judge of noise: one plain rule
    policy.write_text('on_undecodable = "reject"\non_non_media = "reject"\n[[rule]]\nname = "nudity"\n'
                      'when = { nsfw = ">= 0.99" }\naction = "quarantine"\n')
    config = write_config(tmp_path, moto_server, bucket, screening=f'policy = "{policy}"',
                          # the survivor's janitor clears what the killed proxy left (a staging object)
                          limits="janitor_interval_s = 2.0\nstale_upload_age_s = 20.0\nmultipart_lease_s = 10.0",
                          inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]')
    text = config.read_text()
    start = text.index('url = "sqlite')
    config.write_text(text[:start] + f'url = "{url}"' + text[text.index("\n", start):])
    with ThreadPoolExecutor(2) as pool:  # both start at once on an empty database
        proxies = list(pool.map(lambda _: start_subprocess(config, moto_server, bucket), range(2)))
    balancer = start_balancer([p.endpoint for p in proxies])
    uploads = small_uploads()
    big = {f"big/{g}.png": big_upload(n) for n, g in enumerate(("presigned", "header"))}
    answered: dict[str, bytes] = {}
    refused: set[str] = set()
    failed: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()
    progress = Counter()

    def client(generation: str) -> PictrsClient:
        return PictrsClient(balancer.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], generation=generation,
                            path_style=generation == "header", timeout_s=60)

    def upload(item: tuple[str, bytes, str, bool], index: int) -> None:
        key, data, content_type, _ = item
        generation = "presigned" if index % 2 else "header"
        pictrs = client(generation)
        try:
            # pict-rs 0.5.17+ retries a 5xx or a broken connection; older ones fail the upload
            for _ in range(3 if generation == "header" else 1):
                try:
                    if key.startswith("big/"):
                        pictrs.put_multipart(key, data, content_type, part_bytes=PART, concurrency=3)
                    else:
                        pictrs.put(key, data, content_type)
                    with lock:
                        answered[key] = data
                    return
                except PictrsError as exc:
                    if exc.status == 403:
                        with lock:
                            refused.add(key)
                        return
                except Exception:  # the killed proxy's connections: tried again (header generation)
                    continue
            with lock:
                failed.add(key)
        finally:
            pictrs.close()
            with lock:
                progress["done"] += 1

    try:
        items = [*((k, d, "image/png", False) for k, d in big.items()), *uploads]

        def killer() -> None:
            while progress["done"] < len(items) // 3 and not done.is_set():
                threading.Event().wait(0.02)
            os.kill(proxies[1].process.pid, signal.SIGKILL)

        kill = threading.Thread(target=killer)
        kill.start()
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(upload, items, range(len(items))))
        done.set()
        kill.join()
        assert proxies[1].process.wait(10) == -signal.SIGKILL
        # after the kill everything goes to the survivor: a multipart upload whose parts both proxies took
        survivor = client("header")
        try:
            data = big_upload(7)
            survivor.put_multipart("big/after.png", data, "image/png", part_bytes=PART)
            answered["big/after.png"] = data
        except PictrsError as exc:
            raise AssertionError(f"{exc}\n{balancer.app.errors[-6:]}\n{proxies[0].process.poll()}\n"
                                 f"{proxies[0].log()[-3000:]}") from None
        finally:
            survivor.close()
        backends = Counter(entry.backend for entry in balancer.app.log)
        part_backends = {entry.backend for entry in balancer.app.log if "partNumber=" in entry.query}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (moto_server.keys(bucket, ".bucketguard/") or [
                u for u in moto_server.multipart_uploads(bucket) if u["Key"].startswith(".bucketguard/")]):
            time.sleep(1)
        assert moto_server.keys(bucket, ".bucketguard/") == []  # the janitor removed the killed proxy's staging
        # Known gap (front/uploads.py _land): the upstream upload that copies a staged object onto its key is not
        # in the database, so one cut off by the kill stays open upstream (invisible to readers, not swept by the
        # janitor, which sweeps the staging prefix). Only a multipart upload being completed at the kill may leave
        # one (its Complete retried on the survivor may still have succeeded).
        open_uploads = {u["Key"] for u in moto_server.multipart_uploads(bucket)}
        assert open_uploads <= set(big), open_uploads
    finally:
        balancer.stop()
        for proxy in proxies:
            proxy.stop()

    assert len(backends) == 2 and len(part_backends) == 2, (backends, part_backends)
    hits = {k for k, _, _, hit in uploads if hit}
    assert answered and refused and refused <= hits and not set(answered) & hits
    stored = {k for k in moto_server.keys(bucket) if not k.startswith(".bucketguard/")}
    assert set(answered) <= stored  # nothing answered 200 is lost
    # an upload whose answer was lost with the killed proxy may have landed; never a hit, always exact
    assert stored - set(answered) <= failed - hits, stored - set(answered)
    for key in stored:
        assert moto_server.get(bucket, key) == (answered.get(key) or big.get(key) or next(
            d for k, d, _, _ in uploads if k == key))
    ids, quarantined, chain_ok = asyncio.run(_state(url))
    every = [m.id for name in MIGRATION_MODULES for m in importlib.import_module(name).MIGRATIONS]
    assert sorted(ids) == sorted(every)  # applied once although both started at once
    assert chain_ok  # one chain, written by both processes
    assert refused <= set(quarantined) <= hits
    # at most one record per request a proxy took: the client's retries and the balancer's own (a proxy killed
    # after recording, before answering, sends the same request on to the survivor) each count
    puts = [e.path for e in [*balancer.app.log, *balancer.app.unanswered] if e.method == "PUT"]
    taken = {k: sum(path.endswith(f"/{k}") for path in puts) for k in quarantined}
    assert all(n <= taken[k] for k, n in quarantined.items()), (quarantined, taken)
