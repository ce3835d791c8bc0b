"""The feed this instance serves: `GET /federation/v1/key` and `GET /federation/v1/feed?after=SEQ&limit=N`.

Pages are cut by cursor (`after`, the last `seq` the reader has) and at most MAX_LIMIT entries. The outbox
is append-only, so a full page never changes: it is served as cacheable for a day; the last (partial) page
for a few seconds. Every answer has an ETag and honours If-None-Match. Requests are rate-limited per client
address (429 with Retry-After past the budget); the table of addresses is bounded. Each page carries `sig`,
a JWS by the current key over (after, next, more, SHA-256 digest of the entries), so a reader can check a
whole page with one signature (proxy.federation.ingest).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.federation.keys import SigningKey, page_digest
from proxy.federation.publisher import Publisher

MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
REQUESTS_PER_MINUTE = 600
MAX_CLIENTS = 10_000


class RateLimit:
    """A token bucket per client address, in a bounded LRU table."""

    def __init__(self, per_minute: int = REQUESTS_PER_MINUTE, max_clients: int = MAX_CLIENTS) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _cached(request: Request, body: dict[str, Any], max_age: int) -> Response:
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="application/json", headers=headers)


def signed_page(key: SigningKey, entries: list[dict[str, Any]], after: int, more: bool) -> dict[str, Any]:
    """One feed page: the entries after `after`, and the key's signature over exactly them."""
    following = entries[-1]["seq"] if entries else after
    signed = {"v": 1, "t": "page", "after": after, "next": following, "more": more, "digest": page_digest(entries)}
    return {"v": 1, "entries": entries, "more": more, "next": following, "sig": key.sign(signed)}


def feed_routes(publisher: Publisher, *, rate: RateLimit | None = None) -> list[Route]:
    limiter = rate or RateLimit()

    def limited(request: Request) -> Response | None:
        client = request.client.host if request.client else ""
        return None if limiter.allow(client) else _error(429, "too many requests", **{"Retry-After": "5"})

    async def key(request: Request) -> Response:
        if (refused := limited(request)) is not None:
            return refused
        public = publisher.key.public
        return _cached(request, {"v": 1, "name": publisher.name, "alg": "Ed25519", "key": public.line,
                                 "kid": public.kid}, 300)

    async def feed(request: Request) -> Response:
        if (refused := limited(request)) is not None:
            return refused
        try:
            after = int(request.query_params.get("after", "0"))
            limit = int(request.query_params.get("limit", str(DEFAULT_LIMIT)))
        except ValueError:
            return _error(400, "after and limit must be integers")
        if after < 0 or limit < 1:
            return _error(400, "after must be >= 0 and limit >= 1")
        entries, more = await publisher.page(after, min(limit, MAX_LIMIT))
        return _cached(request, signed_page(publisher.key, entries, after, more), 86400 if more else 5)

    return [Route("/federation/v1/key", key, methods=["GET"]),
            Route("/federation/v1/feed", feed, methods=["GET"])]
