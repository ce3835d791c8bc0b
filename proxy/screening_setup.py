"""Builds the screening pipeline from the config and plugs it into the gateway (an app extension)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from proxy.config import Config
from proxy.gateway import AppState
from proxy.hashlists import HashLists
from proxy.pending import PendingScans, PendingWorker
from proxy.pipeline import Pipeline
from proxy.policy import load_policy
from proxy.screening import Upload
from proxy.spool import BodyTooLarge, SpooledBody
from proxy.verdict_cache import VerdictCache

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
        from proxy.quarantine import Quarantine
        from proxy.quarantine_store import open_store

        routes: list[Route] = []
        if config.inference.mode == "pull":
            from proxy.jobs import JobQueue, PullDetectors, job_routes

            queue = JobQueue(state.db, lease_s=config.inference.lease_s)
            detectors, close_detectors = PullDetectors(queue), None
            routes.extend(job_routes(queue, config.server.worker_tokens))
            state.extras["jobs"] = queue
        else:
            detectors, close_detectors = build_detectors(config)
        store = open_store(config.quarantine)
        quarantine = Quarantine(state.db.engine, store, retention_days=config.quarantine.retention_days)
        pending = PendingScans(state.db)
        pipeline = Pipeline(policy=policy, hashlists=hashlists, cache=VerdictCache(state.db), detectors=detectors,
                            quarantine=quarantine, scan_timeout_s=config.screening.scan_timeout_s,
                            enqueue_pending=pending.enqueue, on_decided=state.metrics.record_decision)
        state.operations.screen = pipeline.screen
        worker = PendingWorker(pending, pipeline, state.upstream, config.limits,
                               idle_s=config.screening.pending_poll_s, backoff_s=config.screening.pending_retry_s,
                               on_count=state.metrics.pending.set)
        worker.start()
        state.extras.update(pipeline=pipeline, quarantine=quarantine, pending=pending, pending_worker=worker)

        async def cleanup() -> None:
            await worker.stop()
            if close_detectors is not None:
                await close_detectors()
            await store.close()

        routes.append(Route("/validate", validate_endpoint(config, pipeline), methods=["POST"]))
        if config.server.admin_token:
            from proxy.admin import admin_routes

            routes.extend(admin_routes(config, quarantine, state.upstream, state.db))
        return routes, cleanup

    return install


def validate_endpoint(config: Config, pipeline: Pipeline) -> Callable[[Request], Awaitable[Response]]:
    """pict-rs `media.external_validation`: 2xx lets the upload through, 406 refuses it.

    pict-rs cannot add headers, so the token may come as `?token=...` in the URL it is given, or as a
    bearer token from other callers.
    """
    token = config.server.validate_token

    async def validate(request: Request) -> Response:
        given = request.query_params.get("token", "")
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer "):]
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return PlainTextResponse("a valid validation token is required\n", status_code=401)
        limits = config.limits
        body = SpooledBody(memory_limit=limits.memory_buffer_bytes, max_bytes=limits.max_object_bytes,
                           spool_dir=limits.spool_dir or None)
        try:
            try:
                async for chunk in request.stream():
                    await body.write(chunk)
            except BodyTooLarge:
                return PlainTextResponse("too large to screen\n", status_code=413)
            content_type = request.headers.get("content-type", "application/octet-stream")
            upload = Upload("", "", "(external-validation)", "pict-rs-validate", content_type, body)
            verdict = await pipeline.screen(upload)
        finally:
            body.close()
        if verdict.action == "refuse":
            return PlainTextResponse("cannot screen right now\n", status_code=503, headers={"Retry-After": "5"})
        if not verdict.lands:
            return PlainTextResponse(f"refused by policy: {verdict.rule}\n", status_code=406)
        return PlainTextResponse("ok\n", status_code=200)

    return validate
