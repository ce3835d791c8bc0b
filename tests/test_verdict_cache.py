"""The verdict cache and one decode per upload, against real databases (SQLite and PostgreSQL), the real decode
pool, the real in-process engine (the `test` pack) and, for the backfill, moto.

- concurrent lookups are answered together, by one query, each with its own right answer;
- held writes (a backfill's) are seen by lookups at once and written in one statement per batch;
- a still is decoded once: its PDQ hashes and its distance to the test image come from one decode-pool task;
- a verdict-cache hit decodes nothing, and an entry cached before the distance was kept cannot vouch for a
  cropped copy of the test image (its bytes are decoded again and caught).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import skimage.data
from PIL import Image
from sqlalchemy import event, func, select

from inference.decode_pool import shared_pool
from inference.engine import Engine
from proxy.screening.cache import CachedScan, VerdictCache, verdict_cache
from proxy.screening.hashing import frame_hashes
from proxy.screening.hashlists import HashLists
from proxy.screening.pipeline import Pipeline
from proxy.screening.policy import load_policy
from proxy.screening.testimage import generate_png
from proxy.state import Database, now_text
from proxy.storage.spool import SpooledBody


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def cropped_test_image() -> bytes:
    """The test image with 6% cut off every side: PDQ loses it, the robust matcher must not."""
    image = Image.open(io.BytesIO(generate_png()))
    w, h = image.size
    return jpeg(image.crop((round(w * .06), round(h * .06), round(w * .94), round(h * .94))))


def statements(db: Database, needle: str) -> list[str]:
    """Every SQL statement containing `needle` that the engine sends from now on (executemany counts once)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement: str, *_args) -> None:
        if needle in statement:
            seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    return seen


def lookups(db: Database) -> list[str]:
    """Every statement reading the verdict cache from now on, as the database runs them: on SQLite the lookup goes
    to the driver itself (no SQLAlchemy cursor events), so SQLite's own trace of each pooled connection counts."""
    if db.dialect != "sqlite":
        return statements(db, "FROM verdict_cache")
    seen: list[str] = []

    def trace(sql: str) -> None:
        if "FROM verdict_cache" in sql:
            seen.append(sql)

    def traced(dbapi_connection, _record, _proxy) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.driver_connection._conn.set_trace_callback(trace)  # the sqlite3 connection under aiosqlite

    event.listen(db.engine.sync_engine, "checkout", traced)
    return seen


async def rows(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(verdict_cache))).scalar_one())


async def test_concurrent_lookups_share_one_query_and_each_gets_its_own_answer(db: Database) -> None:
    cache = VerdictCache(db)
    shas = [f"{i:064x}" for i in range(30)]
    scans = {sha: CachedScan({"test": "1"}, {"nsfw": i / 100}, None, False, True) for i, sha in enumerate(shas[:10])}
    for sha, scan in scans.items():
        await cache.put(sha, scan)
    for sha in (shas[0], shas[15], shas[29]):
        await cache.allow(sha, reason="released", added_by="admin")
    selects = lookups(db)
    wanted = shas + shas[::3]  # some asked twice at once
    answers = await asyncio.gather(*(cache.lookup(sha) for sha in wanted))
    for sha, (allowed, cached) in zip(wanted, answers, strict=True):
        assert allowed == (sha in (shas[0], shas[15], shas[29]))
        assert cached == scans.get(sha)
    assert 1 <= len(selects) <= 2, selects  # 40 lookups, not 40 queries
    assert all("allowed_hashes" in sql for sql in selects)  # the allow list in the same statement
    assert await cache.lookup("f" * 64) == (False, None)  # a lone lookup is still answered
    assert len(selects) <= 3, selects


async def test_held_writes_are_seen_at_once_and_written_in_one_statement(db: Database) -> None:
    cache = VerdictCache(db)
    cache.hold_writes(5)
    inserts = statements(db, "INSERT INTO verdict_cache")
    scans = {f"{i:064x}": CachedScan({"test": "1"}, {"nsfw": 0.5}, None, False, True) for i in range(4)}
    for sha, scan in scans.items():
        await cache.put(sha, scan)
    assert await rows(db) == 0 and not inserts  # held...
    assert await cache.lookup(f"{2:064x}") == (False, scans[f"{2:064x}"])  # ...and seen by this process
    await cache.put(f"{4:064x}", CachedScan({"test": "1"}, {"nsfw": 0.1}, None, False, True))  # the fifth
    assert await rows(db) == 5 and len(inserts) == 1
    await cache.put(f"{0:064x}", CachedScan({"test": "2"}, {"nsfw": 0.9}, None, True, True))
    await cache.flush()
    await cache.flush()  # nothing held: nothing written
    assert await rows(db) == 5 and len(inserts) == 2
    assert await VerdictCache(db).lookup(f"{0:064x}") == (False, CachedScan({"test": "2"}, {"nsfw": 0.9}, None,
                                                                             True, True))


async def test_a_cropped_test_image_is_caught_with_one_decode(db: Database) -> None:
    pipeline = Pipeline(policy=load_policy(None), hashlists=HashLists([], []), cache=VerdictCache(db), detectors=None)
    pool = shared_pool()
    before = pool.submitted
    decision = await pipeline.decide(SpooledBody.from_bytes(cropped_test_image()), "image/jpeg")
    assert (decision.action, decision.rule, decision.match["kind"]) == ("quarantine", "builtin-test-image", "layout")
    assert pool.submitted - before == 1  # PDQ of every orientation and the layout distance: one task


async def test_a_cache_hit_decodes_nothing_and_an_old_entry_cannot_vouch_for_the_test_image(
        db: Database, test_pack_path: Path) -> None:
    engine = Engine.from_packs([test_pack_path])
    try:
        pipeline = Pipeline(policy=load_policy(None), hashlists=HashLists([], []), cache=VerdictCache(db),
                            detectors=engine)
        photo = jpeg(Image.fromarray(skimage.data.coffee()))
        pool = shared_pool()
        first = await pipeline.decide(SpooledBody.from_bytes(photo), "image/jpeg")
        assert first.step == "detectors" and first.action == "allow"
        before, model_runs = pool.submitted, engine.model_runs
        again = await pipeline.decide(SpooledBody.from_bytes(photo), "image/jpeg")
        assert again.step == "cache" and again.action == "allow"
        assert pool.submitted == before and engine.model_runs == model_runs  # nothing decoded, no model run

        # An entry written before the test image's distance was kept, claiming the cropped test image is a
        # clean photograph: its frames are not trusted, the bytes are decoded again and caught.
        crop = cropped_test_image()
        body = SpooledBody.from_bytes(crop)
        old_frames = json.loads((await frame_hashes(crop)).to_json())
        del old_frames["test_distance"]
        async with db.engine.begin() as conn:
            await conn.execute(verdict_cache.insert().values(
                sha256=body.sha256, packs_json=json.dumps(first.packs, sort_keys=True),
                signals_json=json.dumps({"nsfw": 0.0}), pdq="", undecodable=False, media=True,
                frames_json=json.dumps(old_frames), updated_at=now_text()))
        before = pool.submitted
        caught = await pipeline.decide(body, "image/jpeg")
        assert (caught.action, caught.rule) == ("quarantine", "builtin-test-image")
        assert pool.submitted - before == 1
    finally:
        await engine.close()
