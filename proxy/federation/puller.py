"""The background task that pulls each trusted peer's feed, page by page from its cursor, with back-off.

Bounds: a page is at most MAX_PAGE_BYTES (read streaming, cut off past it) and MAX_PAGE_ENTRIES entries; a
round reads at most MAX_PAGES_PER_ROUND pages per peer; a peer that fails is retried after the interval
doubled per failure, up to MAX_BACKOFF_S. A distrusted peer is not pulled. Failures never end the task.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from proxy.federation.ingest import Ingester
from proxy.federation.store import FederationStore, PeerRow

log = logging.getLogger("bucketguard.federation")

MAX_PAGE_ENTRIES = 1000
MAX_PAGE_BYTES = 8 * 1024 * 1024
MAX_PAGES_PER_ROUND = 200
MAX_BACKOFF_S = 3600.0
TIMEOUT_S = 20.0


class FeedError(RuntimeError):
    """A feed that could not be read or has the wrong shape."""


async def fetch_page(client: httpx.AsyncClient, url: str, after: int, limit: int) -> dict[str, Any]:
    """One page of a feed, bounded in bytes, checked for shape."""
    chunks: list[bytes] = []
    size = 0
    async with client.stream("GET", f"{url.rstrip('/')}/federation/v1/feed",
                             params={"after": after, "limit": limit}) as response:
        if response.status_code != 200:
            raise FeedError(f"the feed answered HTTP {response.status_code}")
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_PAGE_BYTES:
                raise FeedError(f"a feed page over {MAX_PAGE_BYTES} bytes")
            chunks.append(chunk)
    try:
        page = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise FeedError("the feed page is not JSON") from exc
    if (not isinstance(page, dict) or not isinstance(page.get("entries"), list)
            or len(page["entries"]) > limit or not isinstance(page.get("more"), bool)):
        raise FeedError("the feed page has the wrong shape (entries, more)")
    return page


class Puller:
    def __init__(self, store: FederationStore, ingester: Ingester, *, interval_s: float,
                 on_ingested: Callable[[], Awaitable[None]] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.store = store
        self.ingester = ingester
        self.interval_s = max(interval_s, 0.05)
        self.on_ingested = on_ingested
        self._client = httpx.AsyncClient(timeout=TIMEOUT_S, transport=transport, follow_redirects=False)
        self._failures: dict[str, int] = {}
        self._next: dict[str, float] = {}

    async def pull_peer(self, peer: PeerRow) -> int:
        """Read the peer's feed from its cursor; returns the entries accepted. Raises on a feed failure.
        The next page is fetched and verified while the one before it is written."""

        async def pages() -> AsyncIterator[tuple[list[Any], Any, int]]:
            after = peer.cursor
            for _ in range(MAX_PAGES_PER_ROUND):
                page = await fetch_page(self._client, peer.url, after, MAX_PAGE_ENTRIES)
                yield page["entries"], page.get("sig"), after
                seqs = [e.get("seq") for e in page["entries"] if isinstance(e, dict)]
                last = max((s for s in seqs if isinstance(s, int) and not isinstance(s, bool)), default=after)
                if not page["more"] or last <= after:
                    return
                after = last

        return await self.ingester.ingest_pages(peer, pages())

    async def pull_all(self, *, force: bool = False) -> dict[str, str]:
        """One round over the peers that are due (all with `force`); returns peer -> outcome."""
        outcomes: dict[str, str] = {}
        changed = False
        now = time.monotonic()
        for peer in await self.store.peers():
            if peer.distrusted or (not force and self._next.get(peer.name, 0.0) > now):
                continue
            try:
                accepted = await self.pull_peer(peer)
            except (httpx.HTTPError, FeedError, OSError) as exc:
                failures = self._failures.get(peer.name, 0) + 1
                self._failures[peer.name] = failures
                delay = min(self.interval_s * 2 ** failures, MAX_BACKOFF_S)
                self._next[peer.name] = time.monotonic() + delay
                message = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("federation: pulling %s failed (%s); next try in %.0f s", peer.name, message, delay)
                await self.store.pull_state(peer.name, failures=failures, error=message)
                outcomes[peer.name] = "failed: " + message
                continue
            self._failures.pop(peer.name, None)
            self._next[peer.name] = time.monotonic() + self.interval_s
            changed = changed or accepted > 0
            outcomes[peer.name] = f"accepted {accepted}"
        if changed and self.on_ingested is not None:
            await self.on_ingested()
        return outcomes

    async def close(self) -> None:
        await self._client.aclose()
