"""Purging a caught object from pict-rs through its admin API, once its bytes are safely in quarantine.

pict-rs addresses files by alias; the bucket only knows the object key. How a key leads to its aliases:
- pict-rs's own repository holds the reverse map. When pict-rs keeps it in PostgreSQL (`[pictrs] repo_url`,
  read-only), one query answers it: `hashes.identifier` (the original) or `hashes.motion_identifier` (the
  still frame of a video) or `variants.identifier` (a thumbnail) give the file's `hash`, and `aliases.hash`
  gives every alias of that file.
- Otherwise (pict-rs's default embedded sled repository cannot be read from outside), the candidates are the
  aliases Lemmy recorded (`local_image.pictrs_alias`, proxy/integrations/lemmy.py), each checked with
  `GET /internal/identifier?alias=` (alias -> key) until one names the key.
One `POST /internal/purge?alias=` then removes the file, every alias and the generated variants. Each
attempt, done or failed, is recorded in the evidence log as a `pictrs-purge` event of the quarantine item.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from proxy.config import PictrsConfig
from proxy.evidence import log as evidence

#: How many Lemmy aliases are checked one by one at most when pict-rs's repository cannot be read.
MAX_CANDIDATES = 20_000
_MAX_RESPONSE_BYTES = 1 << 20

_REPO_QUERY = text("""
SELECT a.alias FROM aliases a WHERE a.hash IN (
    SELECT h.hash FROM hashes h WHERE h.identifier = :key OR h.motion_identifier = :key
    UNION SELECT v.hash FROM variants v WHERE v.identifier = :key)
ORDER BY a.alias""")


class PictrsError(RuntimeError):
    """pict-rs refused or could not be reached; the message says which endpoint and why."""


def asyncpg_url(url: str) -> str:
    """A postgresql:// URL as SQLAlchemy's asyncpg dialect wants it."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+asyncpg://{rest}"
    return url


def read_only_engine(url: str) -> AsyncEngine:
    """An engine whose every transaction is READ ONLY: bucketguard never writes to pict-rs's or Lemmy's database."""
    return create_async_engine(asyncpg_url(url), pool_size=2, max_overflow=2, pool_pre_ping=True, connect_args={
        "server_settings": {"default_transaction_read_only": "on"}, "timeout": 10, "command_timeout": 30})


class PictrsAdmin:
    """pict-rs's `/internal/*` endpoints, authenticated with `X-Api-Token`."""

    def __init__(self, endpoint: str, api_key: str, *, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if urlsplit(endpoint).scheme not in ("http", "https"):
            raise PictrsError(f"[pictrs] endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.endpoint, headers={"X-Api-Token": api_key},
                                         timeout=timeout_s, transport=transport, follow_redirects=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, alias: str) -> dict[str, Any]:
        try:
            response = await self._client.request(method, path, params={"alias": alias})
        except httpx.HTTPError as exc:
            raise PictrsError(f"pict-rs {method} {path}: {type(exc).__name__}: {exc}") from exc
        if len(response.content) > _MAX_RESPONSE_BYTES:
            raise PictrsError(f"pict-rs {method} {path}: answer too large")
        if response.status_code != 200:
            raise PictrsError(f"pict-rs {method} {path}?alias={alias}: HTTP {response.status_code} "
                              f"{response.text[:200]!r}")
        try:
            body = response.json()
        except ValueError as exc:
            raise PictrsError(f"pict-rs {method} {path}: not JSON") from exc
        if not isinstance(body, dict):
            raise PictrsError(f"pict-rs {method} {path}: unexpected answer")
        return body

    async def identifier(self, alias: str) -> str | None:
        """The object key behind an alias (None when pict-rs does not know the alias)."""
        try:
            body = await self._call("GET", "/internal/identifier", alias)
        except PictrsError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        value = body.get("identifier")
        return value if isinstance(value, str) else None

    async def aliases(self, alias: str) -> list[str]:
        body = await self._call("GET", "/internal/aliases", alias)
        return [a for a in body.get("aliases", []) if isinstance(a, str)]

    async def purge(self, alias: str) -> list[str]:
        """Purge the file behind `alias` (its every alias and variant); returns the aliases pict-rs removed."""
        body = await self._call("POST", "/internal/purge", alias)
        return [a for a in body.get("aliases", []) if isinstance(a, str)]


@dataclass(frozen=True)
class PurgeResult:
    key: str
    aliases: tuple[str, ...]
    purged: tuple[str, ...]
    resolved_by: str
    error: str = ""


class PictrsPurger:
    """Key -> aliases -> purge, recorded in the evidence chain."""

    def __init__(self, admin: PictrsAdmin, *, repo: AsyncEngine | None = None,
                 candidates: Callable[[], Awaitable[Sequence[str]]] | None = None,
                 concurrency: int = 8) -> None:
        self.admin = admin
        self.repo = repo
        self.candidates = candidates
        self.concurrency = concurrency

    @classmethod
    def from_config(cls, config: PictrsConfig, *,
                    candidates: Callable[[], Awaitable[Sequence[str]]] | None = None) -> PictrsPurger | None:
        if not config.endpoint:
            return None
        repo = read_only_engine(config.repo_url) if config.repo_url else None
        return cls(PictrsAdmin(config.endpoint, config.api_key, timeout_s=config.timeout_s), repo=repo,
                   candidates=candidates)

    async def close(self) -> None:
        await self.admin.close()
        if self.repo is not None:
            await self.repo.dispose()

    async def aliases_of(self, key: str) -> tuple[list[str], str]:
        """The aliases of the file stored under `key`, and how they were found."""
        if self.repo is not None:
            async with self.repo.connect() as conn:
                return list((await conn.execute(_REPO_QUERY, {"key": key})).scalars()), "pict-rs repository"
        if self.candidates is None:
            return [], "no way to resolve aliases: set [pictrs] repo_url or [lemmy] database_url"
        found: list[str] = []
        pending = list((await self.candidates())[:MAX_CANDIDATES])
        gate = asyncio.Semaphore(self.concurrency)

        async def check(alias: str) -> None:
            async with gate:
                if found:
                    return
                if await self.admin.identifier(alias) == key:
                    found.append(alias)

        await asyncio.gather(*(check(alias) for alias in pending))
        if found:
            return sorted(set(found) | set(await self.admin.aliases(found[0]))), "Lemmy aliases + /internal/identifier"
        return [], "Lemmy aliases + /internal/identifier"

    async def purge_key(self, key: str) -> PurgeResult:
        try:
            aliases, how = await self.aliases_of(key)
            if not aliases:
                return PurgeResult(key, (), (), how, "no pict-rs alias found for this key")
            purged = await self.admin.purge(aliases[0])
            return PurgeResult(key, tuple(aliases), tuple(purged), how)
        except (PictrsError, OSError) as exc:
            return PurgeResult(key, (), (), "", str(exc))
        except Exception as exc:  # a database error reading the repository: recorded, never fatal to the scan
            return PurgeResult(key, (), (), "", f"{type(exc).__name__}: {exc}")

    async def purge_caught(self, engine: AsyncEngine, *, item_id: str, bucket: str, key: str,
                           actor: str) -> PurgeResult:
        """Purge a caught object from pict-rs and record the attempt (call after its bytes are in quarantine)."""
        result = await self.purge_key(key)
        await evidence.append_one(engine, evidence.Event(
            event="pictrs-purge", item_id=item_id, actor=actor, bucket=bucket, key=key,
            detail={"endpoint": self.admin.endpoint, "aliases": list(result.aliases), "purged": list(result.purged),
                    "resolved_by": result.resolved_by, "error": result.error,
                    "status": "failed" if result.error else "purged"}))
        return result

    async def purge_moved(self, engine: AsyncEngine, *, bucket: str, key: str, sha256: str, actor: str) -> None:
        """After a landed object was moved to quarantine (scan, deferred scan): purge it from pict-rs once
        per quarantine item (a retry after a crash does not purge or record it again)."""
        from sqlalchemy import and_, select

        from proxy.evidence.quarantine import quarantine_items

        async with engine.connect() as conn:
            item_id = (await conn.execute(select(quarantine_items.c.id).where(and_(
                quarantine_items.c.bucket == bucket, quarantine_items.c.key == key,
                quarantine_items.c.sha256 == sha256)).order_by(quarantine_items.c.created_at.desc()).limit(1))).scalar()
            if item_id is None:
                return
            done = (await conn.execute(select(evidence.evidence_records.c.seq).where(and_(
                evidence.evidence_records.c.item_id == item_id,
                evidence.evidence_records.c.event == "pictrs-purge")).limit(1))).first()
        if done is None:
            await self.purge_caught(engine, item_id=item_id, bucket=bucket, key=key, actor=actor)


def purger_from_config(config: Any) -> tuple[PictrsPurger | None, Callable[[], Awaitable[None]]]:
    """The purger [pictrs] asks for (alias candidates from [lemmy] when set), and how to close both."""
    from proxy.integrations.lemmy import LemmyDatabase

    lemmy = LemmyDatabase.from_config(config.lemmy)
    purger = PictrsPurger.from_config(config.pictrs, candidates=lemmy.aliases if lemmy else None)

    async def close() -> None:
        if purger is not None:
            await purger.close()
        if lemmy is not None:
            await lemmy.close()

    return purger, close
