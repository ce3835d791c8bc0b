"""Review-page logins: server-side sessions that logout revokes and time ends, and a throttle on failed logins.

A session is a random id (the cookie) mapped, in this process, to its own CSRF token and two deadlines: an
absolute one from login and an idle one from the last request. Nothing about the admin token can be derived
from a cookie, and a cookie stops working the moment it is revoked or expires. Sessions live in memory: a
restart logs everyone out, which is the safe direction.

Failed logins (a wrong token in the form or in `Authorization: Bearer`) are counted per client address and
in total over a sliding window; past the limit, further attempts are refused with 429 and `Retry-After`
without even comparing the token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Session:
    id: str
    csrf: str
    created: float
    last_seen: float

    def csrf_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """Live sessions; at most `max_sessions` (the oldest is dropped first)."""

    def __init__(self, *, ttl_s: float = 8 * 3600, idle_s: float = 3600, max_sessions: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.idle_s, self.max_sessions = ttl_s, idle_s, max_sessions
        self._clock = clock
        self._live: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._live[session.id] = session
        while len(self._live) > self.max_sessions:
            self._live.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id (its idle clock restarted), or None when unknown, revoked or expired."""
        session = self._live.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock()
        if now - session.created > self.ttl_s or now - session.last_seen > self.idle_s:
            self._live.pop(session_id, None)
            return None
        session.last_seen = now
        return session

    def revoke(self, session_id: str) -> None:
        self._live.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._live)


class LoginThrottle:
    """Failed logins per client and overall in a sliding window; past a limit, wait."""

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
