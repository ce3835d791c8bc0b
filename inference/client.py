"""The proxy's client for inference services: several endpoints balanced (least outstanding requests, health
checks, back-off: `inference.fleet.EndpointPool`), a retry on another endpoint, timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx

from inference.batcher import QueueFull
from inference.engine import ScreenResult
from inference.fleet import EndpointPool


class InferenceUnavailable(Exception):
    """No inference endpoint answered in time: the proxy's `on_unavailable` policy applies."""


#: What a detector OUTAGE raises, whichever front (this client, the in-process engine, pull mode): every
#: endpoint down or refusing, a full queue, no answer in time. Only these are "unavailable"; bytes that cannot
#: be decoded come back as an `undecodable` result instead.
OUTAGES: tuple[type[BaseException], ...] = (InferenceUnavailable, QueueFull, TimeoutError, ConnectionError,
                                             httpx.TransportError)


class InferenceClient:
    """Same `screen()` interface as the in-process Engine."""

    def __init__(self, endpoints: Sequence[str], token: str, *, timeout_s: float = 20.0, retries: int = 1,
                 cooldown_s: float = 5.0, backoff_s: float = 0.5, probe_interval_s: float = 2.0) -> None:
        """`backoff_s`: the first back-off of an endpoint that failed, doubled per failure up to `cooldown_s`;
        while one is backing off, its /healthz is probed in the background at most every `probe_interval_s`."""
        if not endpoints:
            raise ValueError("at least one inference endpoint is needed")
        self.pool = EndpointPool(endpoints, base_backoff_s=backoff_s, max_backoff_s=cooldown_s)
        self.endpoints = self.pool.urls
        self.retries = retries
        self.cooldown_s = cooldown_s
        self.probe_interval_s = probe_interval_s
        self._last_probe = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
                                         headers={"Authorization": f"Bearer {token}"},
                                         limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    async def check_health(self) -> None:
        """Bring endpoints in back-off back early when their /healthz answers (call it from a background task)."""
        await self.pool.check_health(self._client)

    def _maybe_probe(self) -> None:
        now = time.monotonic()
        if (now - self._last_probe >= self.probe_interval_s and (self._probe is None or self._probe.done())
                and self.pool.backing_off()):
            self._last_probe = now
            self._probe = asyncio.create_task(self.check_health())

    async def screen(self, data: bytes, content_type: str | None = None) -> ScreenResult:
        self._maybe_probe()
        errors: list[str] = []
        for index in self.pool.attempts(self.retries):
            endpoint = self.endpoints[index]
            try:
                response = await self._client.post(f"{endpoint}/v1/screen", content=data,
                                                   headers={"Content-Type": content_type or "application/octet-stream"})
            except httpx.HTTPError as exc:
                self.pool.release(index, ok=False)
                errors.append(f"{endpoint}: {type(exc).__name__}")
                continue
            self.pool.release(index, ok=response.status_code < 500 or response.status_code == 503)
            if response.status_code == 200:
                result = ScreenResult.from_json(response.json())
                result.decided_by = endpoint
                return result
            if response.status_code == 413:  # a property of the bytes, not an outage
                return ScreenResult({"undecodable": 1.0}, undecodable=True, decided_by=endpoint,
                                    reason=f"{len(data)} bytes is more than the inference service accepts")
            if response.status_code >= 500:  # 503: busy (full queue), so another endpoint gets the retry
                errors.append(f"{endpoint}: HTTP {response.status_code}")
                continue
            raise InferenceUnavailable(f"{endpoint} refused the request: HTTP {response.status_code} "
                                       f"{response.text[:200]}")
        raise InferenceUnavailable("no inference endpoint answered: " + "; ".join(errors))

    async def close(self) -> None:
        if self._probe is not None:
            await asyncio.gather(self._probe, return_exceptions=True)
        await self._client.aclose()
