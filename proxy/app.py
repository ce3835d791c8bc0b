"""The app wiring: the gateway, plus the screening pipeline, jobs and review page the config asks for."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import Route

from proxy.config import Config
from proxy.front.gateway import AppState, Gateway, create_app
from proxy.front.validate import validate_endpoint
from proxy.jobs.pending import PendingScans, PendingWorker
from proxy.screening.cache import VerdictCache
from proxy.screening.hashlists import HashLists
from proxy.screening.pipeline import Pipeline
from proxy.screening.policy import load_policy

log = logging.getLogger("bucketguard.screening")


def build_detectors(config: Config) -> tuple[Any, Callable[[], Awaitable[None]] | None]:
    """The detector front the `[inference]` section names, and how to close it."""
    mode = config.inference.mode
    if mode == "none":
        return None, None
    if mode == "in-process":
        if not config.inference.packs:
            log.warning("inference.mode is in-process but no packs are configured: no detector runs")
            return None, None
        from inference.engine import Engine

        engine = Engine.from_config(config.inference)
        for pack in engine.packs:
            log.info("pack %s %s runs in-process on %s", pack["name"], pack["version"], pack["provider"])
        return engine, engine.close
    if mode == "remote":
        from inference.client import InferenceClient

        client = InferenceClient(config.inference.endpoints, config.inference.token,
                                 timeout_s=config.inference.timeout_s, retries=config.inference.retries)
        return client, client.close
    raise ValueError(f"inference.mode {mode!r} needs the database: it is built in pipeline_extension")


def pipeline_extension(config: Config) -> Callable[[AppState], Awaitable[Any]]:
    policy = load_policy(config.screening.policy or None)
    hashlists = HashLists.load(config.screening.allow_lists, config.screening.block_lists,
                               config.screening.pdq_max_distance)

    async def install(state: AppState) -> tuple[list[Route], Callable[[], Awaitable[None]]]:
        from proxy.evidence.quarantine import Quarantine
        from proxy.evidence.store import open_store
        from proxy.integrations.pictrs import purger_from_config

        routes: list[Route] = []
        if config.inference.mode == "pull":
            from proxy.jobs.pull import JobQueue, PullDetectors, job_routes

            queue = JobQueue(state.db, lease_s=config.inference.lease_s)
            detectors, close_detectors = PullDetectors(queue), None
            routes.extend(job_routes(queue, config.server.worker_tokens))
            state.extras["jobs"] = queue
        else:
            detectors, close_detectors = build_detectors(config)
        store = open_store(config.quarantine)
        quarantine = Quarantine(state.db.engine, store, retention_days=config.quarantine.retention_days)
        pending = PendingScans(state.db, confirm_s=config.screening.pending_confirm_s)
        purger, close_purger = purger_from_config(config)  # [pictrs]: deferred-scan hits leave pict-rs too
        federation = None
        if config.federation.key_file or config.federation.peers:
            from proxy.federation.wiring import Federation

            federation = Federation(config, state.db, policy, config.screening.pdq_max_distance)
            await federation.start()
        pipeline = Pipeline(policy=policy, hashlists=hashlists, cache=VerdictCache(state.db), detectors=detectors,
                            quarantine=quarantine, scan_timeout_s=config.screening.scan_timeout_s,
                            enqueue_pending=pending.enqueue, on_decided=state.metrics.record_decision,
                            federation=federation.step if federation is not None else None)
        if federation is not None:
            federation.attach(pipeline)
            routes.extend(federation.routes())
            state.extras["federation"] = federation
        state.operations.screen = pipeline.screen
        worker = PendingWorker(pending, pipeline, state.upstream, config.limits,
                               idle_s=config.screening.pending_poll_s, backoff_s=config.screening.pending_retry_s,
                               max_attempts=config.screening.pending_max_attempts,
                               missing_s=config.screening.pending_missing_s, on_count=state.metrics.pending.set,
                               purger=purger)
        # The front calls this once a screened write has landed; rows it never confirms wait pending_confirm_s.
        state.operations.on_landed = pending.confirm
        state.operations.on_write_failed = pipeline.write_failed
        worker.start()
        state.extras.update(pipeline=pipeline, quarantine=quarantine, pending=pending, pending_worker=worker)

        async def cleanup() -> None:
            await worker.stop()
            await close_purger()
            if close_detectors is not None:
                await close_detectors()
            if federation is not None:
                await federation.close()
            await store.close()

        routes.append(Route("/validate", validate_endpoint(config, pipeline), methods=["POST"]))
        if config.server.admin_token:
            from proxy.admin.page import admin_routes

            routes.extend(admin_routes(config, quarantine, state.upstream, state.db))
        return routes, cleanup

    return install


def build_app(config: Config) -> Gateway:
    """The proxy's ASGI app for this config."""
    return create_app(config, extensions=(pipeline_extension(config),))
