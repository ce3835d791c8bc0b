"""Review-page logins: server-side sessions that logout revokes and time ends, and a throttle on failed logins.

A session is a random id (the cookie) with its own CSRF token and two deadlines: an absolute one from login
and an idle one from the last request. Sessions live in the state database (table `admin_sessions`), so every
proxy on one database knows them: a login at one proxy works at the next, a logout at any of them ends the
session at all of them, and a restart no longer logs anyone out (the deadlines still do).

The database never holds the cookie: a row is keyed by HMAC-SHA256 of the cookie under the admin token, so a
reader of the database cannot present a session, and a session made under one admin token is unknown under
another (rotating the token in the config ends every session made with the old one, as a restart used to).
Nothing about the admin token can be derived from a cookie. Every use reads the row and checks both deadlines
(an expired row is deleted there and then; revoke deletes); `last_seen` is written at most once per
`touch_s` per session, not on every request, so the idle deadline may come up to `touch_s` early. Expired rows
are swept at each login and at most once a minute per process; at most `max_sessions` rows are kept (the
oldest go first). Deadlines are wall-clock times, so proxies sharing a database need synchronised clocks.

Failed logins (a wrong token in the form or in `Authorization: Bearer`) are counted per client address and
in total over a sliding window; past the limit, further attempts are refused with 429 and `Retry-After`
without even comparing the token. The throttle is per process: with N proxies behind a balancer the limits
are N times as high for the whole deployment.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Column, Float, String, Table, delete, func, insert, or_, select, update

from proxy.state import Database, Migration, create_tables, metadata

admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),  # HMAC-SHA256(admin token, cookie), hex
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False, index=True),  # seconds since the epoch
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # the absolute deadline: created_at + ttl_s
    Column("idle_until", Float, nullable=False),  # the idle deadline: last_seen + idle_s
)

MIGRATIONS = [Migration("admin-sessions-0001", create_tables(admin_sessions))]


@dataclass
class Session:
    id: str
    csrf: str
    created: float
    last_seen: float

    def csrf_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """Live sessions in the state database, known under the admin token `secret`."""

    def __init__(self, db: Database, secret: str, *, ttl_s: float = 8 * 3600, idle_s: float = 3600,
                 touch_s: float = 5.0, sweep_s: float = 60.0, max_sessions: int = 256,
                 clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("sessions need the admin token")
        self.db, self._key = db, secret.encode()
        self.ttl_s, self.idle_s, self.touch_s, self.sweep_s = ttl_s, idle_s, touch_s, sweep_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._swept = float("-inf")

    def _hash(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()

    async def create(self) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        async with self.db.engine.begin() as conn:
            await conn.execute(insert(admin_sessions).values(
                id_hash=self._hash(session.id), csrf=session.csrf, created_at=now, last_seen=now,
                expires_at=now + self.ttl_s, idle_until=now + self.idle_s))
        await self.sweep(now)
        return session

    async def get(self, session_id: str) -> Session | None:
        """The live session with this id (its idle clock restarted), or None when unknown, revoked or expired."""
        if not session_id:
            return None
        now = self._clock()
        if now - self._swept >= self.sweep_s:
            await self.sweep(now)
        id_hash = self._hash(session_id)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(admin_sessions).where(admin_sessions.c.id_hash == id_hash))).first()
        if row is None:
            return None
        if now >= row.expires_at or now >= row.idle_until:
            await self.revoke(session_id)
            return None
        last_seen = row.last_seen
        if now - last_seen >= self.touch_s:  # bounded writes: the idle clock moves in steps of touch_s
            last_seen = now
            async with self.db.engine.begin() as conn:
                await conn.execute(update(admin_sessions).where(
                    admin_sessions.c.id_hash == id_hash, admin_sessions.c.last_seen <= now - self.touch_s,
                ).values(last_seen=now, idle_until=now + self.idle_s))
        return Session(session_id, row.csrf, row.created_at, last_seen)

    async def revoke(self, session_id: str) -> None:
        if not session_id:
            return
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(admin_sessions).where(admin_sessions.c.id_hash == self._hash(session_id)))

    async def sweep(self, now: float | None = None) -> None:
        """Delete expired rows, then the oldest beyond `max_sessions`."""
        now = self._clock() if now is None else now
        self._swept = now
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(admin_sessions).where(
                or_(admin_sessions.c.expires_at <= now, admin_sessions.c.idle_until <= now)))
            total = (await conn.execute(select(func.count()).select_from(admin_sessions))).scalar_one()
            if total > self.max_sessions:
                oldest = select(admin_sessions.c.id_hash).order_by(admin_sessions.c.created_at).limit(
                    total - self.max_sessions).scalar_subquery()
                await conn.execute(delete(admin_sessions).where(admin_sessions.c.id_hash.in_(oldest)))

    async def count(self) -> int:
        """Rows in the table (live or not yet swept)."""
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(admin_sessions))).scalar_one())


class LoginThrottle:
    """Failed logins per client and overall in a sliding window; past a limit, wait. Per process (see above)."""

    def __init__(self, *, per_client: int = 5, overall: int = 50, window_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000) -> None:
        self.per_client, self.overall, self.window_s = per_client, overall, window_s
        self._clock = clock
        self._max_clients = max_clients
        self._by_client: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and now - times[0] > self.window_s:
            times.popleft()

    def retry_after(self, client: str) -> int:
        """Seconds to wait before this client may try again (0: go ahead)."""
        now = self._clock()
        self._trim(self._all, now)
        waits = []
        if len(self._all) >= self.overall:
            waits.append(self._all[0] + self.window_s - now)
        times = self._by_client.get(client)
        if times is not None:
            self._trim(times, now)
            if len(times) >= self.per_client:
                waits.append(times[0] + self.window_s - now)
        return max(1, int(max(waits)) + 1) if waits else 0

    def failed(self, client: str) -> None:
        now = self._clock()
        self._all.append(now)
        times = self._by_client.setdefault(client, deque())
        self._by_client.move_to_end(client)
        times.append(now)
        while len(self._by_client) > self._max_clients:
            self._by_client.popitem(last=False)
