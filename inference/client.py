"""The proxy's client for inference services: several endpoints balanced, retries on another, timeouts."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import httpx

from inference.batcher import QueueFull
from inference.engine import ScreenResult


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
                 cooldown_s: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("at least one inference endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._next = itertools.cycle(range(len(self.endpoints)))
        self._down_until = [0.0] * len(self.endpoints)
        self.retries = retries
        self.cooldown_s = cooldown_s
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
                                         headers={"Authorization": f"Bearer {token}"},
                                         limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    def _order(self) -> list[int]:
        start = next(self._next)
        order = [(start + i) % len(self.endpoints) for i in range(len(self.endpoints))]
        now = time.monotonic()
        up = [i for i in order if self._down_until[i] <= now]
        return up + [i for i in order if i not in up]

    async def screen(self, data: bytes, content_type: str | None = None) -> ScreenResult:
        errors = []
        attempts = self._order()[: self.retries + 1]
        for index in attempts:
            endpoint = self.endpoints[index]
            try:
                response = await self._client.post(f"{endpoint}/v1/screen", content=data,
                                                   headers={"Content-Type": content_type or "application/octet-stream"})
            except httpx.HTTPError as exc:
                self._down_until[index] = time.monotonic() + self.cooldown_s
                errors.append(f"{endpoint}: {type(exc).__name__}")
                continue
            if response.status_code == 200:
                result = ScreenResult.from_json(response.json())
                result.decided_by = endpoint
                return result
            if response.status_code == 413:  # a property of the bytes, not an outage
                return ScreenResult({"undecodable": 1.0}, undecodable=True, decided_by=endpoint,
                                    reason=f"{len(data)} bytes is more than the inference service accepts")
            if response.status_code >= 500:
                errors.append(f"{endpoint}: HTTP {response.status_code}")
                if response.status_code != 503:
                    self._down_until[index] = time.monotonic() + self.cooldown_s
                continue
            raise InferenceUnavailable(f"{endpoint} refused the request: HTTP {response.status_code} "
                                       f"{response.text[:200]}")
        raise InferenceUnavailable("no inference endpoint answered: " + "; ".join(errors))

    async def close(self) -> None:
        await self._client.aclose()
