"""Several inference endpoints used together: least outstanding requests, health checks, back-off.

`EndpointPool` only keeps score; the callers (the bucketguard service client, the KServe v2 sessions) ask it
which endpoint to use, and tell it how the call went:

- pick: among the endpoints not backing off, the one with the fewest requests in flight (ties go round the
  ring, so an idle fleet is used evenly); when every endpoint is backing off, the one whose back-off ends first
  is tried anyway (a fleet that is all down must still be probed, never given up on for good).
- a failure (connection refused, timeout, 5xx) puts the endpoint in back-off: 0.5 s, doubling per consecutive
  failure, up to `max_backoff_s`; a success ends it.
- `check_health` probes the endpoints in back-off (GET on their health path) so a recovered one comes back
  before its back-off runs out; callers run it from a background task or before a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx

log = logging.getLogger("bucketguard.inference")


@dataclass
class EndpointState:
    url: str
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0
    served: int = 0


class EndpointPool:
    """Thread-safe: the KServe sessions call it from the detectors' worker threads."""

    def __init__(self, endpoints: Sequence[str], *, base_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 health_path: str = "/healthz") -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.states = [EndpointState(url.rstrip("/")) for url in endpoints]
        self.base_backoff_s, self.max_backoff_s = base_backoff_s, max_backoff_s
        self.health_path = health_path
        self._lock = threading.Lock()
        self._turn = 0

    @property
    def urls(self) -> list[str]:
        return [state.url for state in self.states]

    def acquire(self, exclude: set[int] | frozenset[int] = frozenset()) -> int | None:
        """The endpoint to call next (its outstanding count taken), or None when every one is excluded."""
        with self._lock:
            now = time.monotonic()
            candidates = [i for i in range(len(self.states)) if i not in exclude]
            if not candidates:
                return None
            up = [i for i in candidates if self.states[i].down_until <= now]
            if up:
                ring = len(self.states)
                best = min(up, key=lambda i: (self.states[i].outstanding, (i - self._turn) % ring))
                self._turn = (best + 1) % ring
            else:
                best = min(candidates, key=lambda i: self.states[i].down_until)
            self.states[best].outstanding += 1
            return best

    def attempts(self, retries: int) -> Iterator[int]:
        """The endpoints one request tries: up to ``retries + 1``, each a different one, each acquired (the caller
        releases it), while any is usable."""
        tried: set[int] = set()
        for _ in range(retries + 1):
            index = self.acquire(tried)
            if index is None:
                return
            tried.add(index)
            yield index

    def release(self, index: int, *, ok: bool) -> None:
        """The call to `index` is over; `ok` False (transport error, timeout, 5xx) starts or extends a back-off."""
        with self._lock:
            state = self.states[index]
            state.outstanding = max(0, state.outstanding - 1)
            if ok:
                state.failures, state.down_until = 0, 0.0
                state.served += 1
            else:
                state.failures += 1
                delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (state.failures - 1))
                state.down_until = time.monotonic() + delay

    def backing_off(self) -> list[int]:
        now = time.monotonic()
        with self._lock:
            return [i for i, state in enumerate(self.states) if state.down_until > now]

    def mark_healthy(self, index: int) -> None:
        with self._lock:
            self.states[index].failures, self.states[index].down_until = 0, 0.0

    async def check_health(self, client: httpx.AsyncClient, timeout_s: float = 2.0) -> None:
        """Probe every endpoint in back-off with GET `health_path`; a 200 ends its back-off."""
        for index in self.backing_off():
            try:
                response = await client.get(self.states[index].url + self.health_path, timeout=timeout_s)
            except (httpx.HTTPError, OSError):
                log.debug("%s is still down", self.states[index].url)
                continue
            if response.status_code == 200:
                self.mark_healthy(index)
