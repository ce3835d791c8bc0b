"""Federation in the running proxy: peers checked and synced, the feed's routes, the step, the act hook that
records reliance and publishes, and one background task (pull peers, publish confirmed blocks, refresh the
PDQ index). Started by proxy.app only when `[federation]` names a key file or peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.routing import Route

from proxy.config import Config, ConfigError
from proxy.federation.feed import feed_routes
from proxy.federation.ingest import Ingester
from proxy.federation.keys import KeyFileError, PublicKey
from proxy.federation.publisher import Publisher
from proxy.federation.puller import Puller
from proxy.federation.step import PeerAttestations
from proxy.federation.store import FederationStore
from proxy.federation.trust import Rules
from proxy.screening.policy import Policy
from proxy.state import Database

log = logging.getLogger("bucketguard.federation")


def configured(config: Config) -> bool:
    return bool(config.federation.key_file or config.federation.peers)


def checked_peers(config: Config) -> list[tuple[str, str, str, str, tuple[str, ...], float]]:
    """(name, url, key line, kid, trust, weight) of every configured peer; ConfigError names a bad key."""
    out = []
    for name, peer in config.federation.peers.items():
        where = f"federation.peers.{name}"
        if not name or len(name) > 64 or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise ConfigError(f"{where}: a peer name is letters, digits, '-', '_' or '.' (at most 64)")
        if not peer.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: expected an http:// or https:// URL, got {peer.url!r}")
        try:
            key = PublicKey.parse(peer.key)
        except KeyFileError as exc:
            raise ConfigError(f"{where}.key: {exc}") from exc
        out.append((name, peer.url, key.line, key.kid, tuple(peer.trust), peer.weight))
    fed = config.federation
    if fed.safe_quorum <= 0 or fed.block_quorum <= 0:
        raise ConfigError("federation.safe_quorum, federation.block_quorum: must be above 0")
    return out


def rules_of(config: Config) -> Rules:
    fed = config.federation
    return Rules(fed.safe_quorum, fed.block_quorum, tuple(fed.accept_packs), fed.on_peer_block)


def open_publisher(config: Config, store: FederationStore) -> Publisher | None:
    fed = config.federation
    if not fed.key_file:
        return None
    try:
        return Publisher(store, fed.key_file, name=fed.name, kinds=tuple(fed.publish),
                         ttl_days=fed.attestation_ttl_days)
    except (KeyFileError, OSError) as exc:
        raise ConfigError(f"federation.key_file: {exc}") from exc


class Federation:
    def __init__(self, config: Config, db: Database, policy: Policy, pdq_max_distance: int) -> None:
        self.config = config
        self.store = FederationStore(db)
        self.publisher = open_publisher(config, self.store)
        fed = config.federation
        self.step = (PeerAttestations(self.store, policy, rules_of(config), pdq_max_distance=pdq_max_distance)
                     if fed.peers else None)
        self.puller = (Puller(self.store, Ingester(self.store, max_per_peer=fed.max_attestations_per_peer),
                              interval_s=fed.pull_interval_s, on_ingested=self.step.refresh)
                       if self.step is not None else None)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.sync_peers(checked_peers(self.config))
        if self.step is not None:
            await self.step.refresh()
        self._task = asyncio.create_task(self._loop(), name="federation")

    def routes(self) -> list[Route]:
        return feed_routes(self.publisher) if self.publisher is not None else []

    def attach(self, pipeline: Any) -> None:
        """Wrap the pipeline's act: reliance is recorded before the object lands; publishing comes after."""
        act = pipeline.act
        store, publisher = self.store, self.publisher
        if publisher is not None and pipeline.quarantine is not None:
            publisher.quarantine_store = pipeline.quarantine.store

        async def act_with_federation(upload: Any, decision: Any, *, actor: str = "") -> Any:
            sources = (decision.match or {}).get("federation") if decision.step == PeerAttestations.name else None
            if sources:
                await store.record_reliance(upload.bucket, upload.key, upload.sha256, decision.action,
                                            decision.rule, sources)
            verdict = await act(upload, decision, actor=actor)
            if publisher is not None:
                try:
                    await publisher.on_decided(decision)
                except Exception:  # publishing is best effort; the upload's verdict stands
                    log.exception("federation: publishing an attestation failed")
            return verdict

        pipeline.act = act_with_federation

    async def _loop(self) -> None:
        rounds = 0
        while True:
            try:
                if self.puller is not None:
                    await self.puller.pull_all()
                if self.publisher is not None:
                    await self.publisher.sync_confirmed()
                rounds += 1
                if rounds % 20 == 0 and self.step is not None:  # other replicas ingest too
                    await self.step.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not end federation for the life of the process
                log.exception("federation: a background round failed")
            await asyncio.sleep(min(self.config.federation.pull_interval_s, 5.0))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.puller is not None:
            await self.puller.close()
        await self.store.close()
