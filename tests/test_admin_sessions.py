"""Review-page sessions in the state database (proxy/admin/sessions.py): shared by every proxy on one database.

The session store runs on SQLite and on a real PostgreSQL (`database_url`), two handles on one database standing
for two proxies. Then two real `bucketguard serve` processes on one PostgreSQL and a real HTTP client: a login at
one works at the other (a CSRF-protected POST included), a logout at one ends the session at both, and a session
past either deadline is refused by both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.exceptions
import httpx
import pytest
from sqlalchemy import select, update

from proxy.admin.page import COOKIE
from proxy.admin.sessions import Sessions, admin_sessions
from proxy.evidence.quarantine import quarantine_items
from proxy.screening.testimage import generate_png
from proxy.state import Database
from tests.support.moto import S3Server
from tests.support.postgres import PostgresServer
from tests.support.proxy import CLIENT_BUCKET, new_bucket, start_subprocess, write_config

TOKEN = "two-proxies-admin-token-0123456789"


@pytest.fixture
async def two_handles(database_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two engines on one database, as two proxies have."""
    first, second = Database(database_url), Database(database_url)
    await first.migrate()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def rows(db: Database) -> list[dict]:
    async with db.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(admin_sessions))]


async def test_sessions_are_shared_bound_to_the_token_expire_and_revoke(two_handles: tuple[Database, Database]) -> None:
    now = [1_000_000.0]
    a = Sessions(two_handles[0], TOKEN, ttl_s=100, idle_s=30, touch_s=5, clock=lambda: now[0])
    b = Sessions(two_handles[1], TOKEN, ttl_s=100, idle_s=30, touch_s=5, clock=lambda: now[0])
    session = await a.create()
    seen = await b.get(session.id)
    assert seen is not None and seen.csrf == session.csrf and seen.csrf_ok(session.csrf)
    assert not seen.csrf_ok("") and not seen.csrf_ok(session.csrf[:-1] + "x")
    (row,) = await rows(two_handles[0])
    assert session.id not in str(row) and session.id not in row["id_hash"]  # the cookie is not stored
    rotated = Sessions(two_handles[1], TOKEN + "-rotated", clock=lambda: now[0])
    assert await rotated.get(session.id) is None, "a new admin token ends the sessions made with the old one"
    now[0] += 29
    assert await a.get(session.id) is not None, "activity within the idle time keeps the session"
    now[0] += 29
    assert await b.get(session.id) is not None, "the other proxy's use counts"
    now[0] += 31
    assert await a.get(session.id) is None, "idle too long"
    assert await rows(two_handles[0]) == [], "an expired session is deleted where it is found"

    fresh = await a.create()
    for turn in range(4):
        now[0] += 24
        assert await (a, b)[turn % 2].get(fresh.id) is not None
    now[0] += 4
    assert await b.get(fresh.id) is None, "older than the absolute lifetime, however active"

    revoked = await a.create()
    await b.revoke(revoked.id)
    assert await a.get(revoked.id) is None and await a.get("") is None and await a.get("made-up") is None


async def test_last_seen_is_written_at_most_every_touch_s(two_handles: tuple[Database, Database]) -> None:
    now = [2_000_000.0]
    sessions = Sessions(two_handles[0], TOKEN, idle_s=60, touch_s=5, clock=lambda: now[0])
    session = await sessions.create()
    for _ in range(4):
        now[0] += 1
        assert await sessions.get(session.id) is not None
    assert (await rows(two_handles[0]))[0]["last_seen"] == 2_000_000.0, "no write within touch_s"
    now[0] += 1
    await sessions.get(session.id)
    (row,) = await rows(two_handles[0])
    assert row["last_seen"] == now[0] and row["idle_until"] == now[0] + 60


async def test_expired_rows_are_swept_and_the_table_is_bounded(two_handles: tuple[Database, Database]) -> None:
    now = [3_000_000.0]
    sessions = Sessions(two_handles[0], TOKEN, ttl_s=100, idle_s=50, max_sessions=3, clock=lambda: now[0])
    for _ in range(2):
        await sessions.create()
    now[0] += 60  # both idle past their deadline, never used again
    kept = [await sessions.create() for _ in range(5)]
    assert await sessions.count() == 3  # the two expired swept, the oldest beyond the bound dropped
    assert [await sessions.get(s.id) is not None for s in kept] == [False, False, True, True, True]


async def _expire(url: str, cookies: list[str], column: str) -> None:
    """Move the deadline `column` of the sessions with these cookies into the past (time passing, faster)."""
    db = Database(url)
    try:
        hashes = [Sessions(db, TOKEN)._hash(c) for c in cookies]
        async with db.engine.begin() as conn:
            await conn.execute(update(admin_sessions).where(admin_sessions.c.id_hash.in_(hashes))
                               .values({column: time.time() - 1}))
    finally:
        await db.close()


async def _item(url: str) -> tuple[str, str]:
    """(id, report reference) of the one quarantined item."""
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            row = (await conn.execute(select(quarantine_items.c.id, quarantine_items.c.report_ref))).one()
        return str(row.id), str(row.report_ref or "")
    finally:
        await db.close()


def login(client: httpx.Client, endpoint: str) -> str:
    response = client.post(f"{endpoint}/admin/login", data={"token": TOKEN})
    assert response.status_code == 303, response.text
    cookie = client.cookies.get(COOKIE, path="/admin")
    assert cookie
    return cookie


def csrf_of(page: httpx.Response) -> str:
    assert page.status_code == 200, page.text
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


@pytest.mark.slow
def test_two_proxies_share_logins_logouts_and_deadlines(moto_server: S3Server, postgres_server: PostgresServer,
                                                        tmp_path: Path) -> None:
    bucket = new_bucket(moto_server)
    url = postgres_server.url(postgres_server.create_database("admin"))
    config = write_config(tmp_path, moto_server, bucket, server=f'admin_token = "{TOKEN}"')
    text = config.read_text()
    start = text.index('url = "sqlite')
    config.write_text(text[:start] + f'url = "{url}"' + text[text.index("\n", start):])
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: start_subprocess(config, moto_server, bucket), range(2))
    try:
        with pytest.raises(botocore.exceptions.ClientError):  # the built-in test image: an item to act on
            a.client().put_object(Bucket=CLIENT_BUCKET, Key="media/t.png", Body=generate_png(),
                                  ContentType="image/png")
        item_id, _ = asyncio.run(_item(url))
        with httpx.Client() as browser:  # one cookie jar for both proxies, as behind a balancer
            cookie = login(browser, a.endpoint)
            csrf = csrf_of(browser.get(f"{b.endpoint}/admin/"))
            assert csrf == csrf_of(browser.get(f"{a.endpoint}/admin/"))  # one session, one CSRF token
            forged = browser.post(f"{b.endpoint}/admin/items/{item_id}/reported", data={"ref": "forged"})
            assert forged.status_code == 403  # CSRF still guards every POST
            reported = browser.post(f"{b.endpoint}/admin/items/{item_id}/reported",
                                    data={"ref": "NCMEC-1", "csrf": csrf})
            assert reported.status_code == 303 and asyncio.run(_item(url))[1] == "NCMEC-1"
            assert browser.post(f"{b.endpoint}/admin/logout").status_code == 303
        for proxy in (a, b):
            replay = httpx.get(f"{proxy.endpoint}/admin/items/{item_id}", cookies={COOKIE: cookie})
            assert replay.status_code == 401, proxy.endpoint

        with httpx.Client() as first, httpx.Client() as second:
            idle, old = login(first, a.endpoint), login(second, b.endpoint)
            asyncio.run(_expire(url, [idle], "idle_until"))
            asyncio.run(_expire(url, [old], "expires_at"))
            # each is judged first by the proxy that did not make it, then by the one that did
            for cookie, order in ((idle, (b, a)), (old, (a, b))):
                for proxy in order:
                    response = httpx.get(f"{proxy.endpoint}/admin/", cookies={COOKIE: cookie})
                    assert response.status_code == 401, (proxy.endpoint, cookie == idle)
    finally:
        with ThreadPoolExecutor(2) as pool:  # both shut down at once
            list(pool.map(lambda proxy: proxy.stop(), (a, b)))
