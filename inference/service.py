"""The inference service over HTTP: `POST /v1/screen` with the raw bytes, answered with signals as JSON."""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from inference.batcher import QueueFull
from inference.engine import Engine

DEFAULT_MAX_BODY = 256 * 1024 * 1024


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bucketguard_inference_requests", "Screen requests by status", ["status"],
                                registry=r)
        self.latency = Histogram("bucketguard_inference_seconds", "Screen latency",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.queue = Gauge("bucketguard_inference_queue", "Frames waiting for a model run", registry=r)
        self.model_runs = Gauge("bucketguard_inference_model_runs", "Model runs (batches) so far", registry=r)
        self.mean_batch = Gauge("bucketguard_inference_mean_batch", "Mean frames per model run", ["detector"],
                                registry=r)
        self.provider = Gauge("bucketguard_inference_provider", "Execution provider in use (1)",
                              ["pack", "provider"], registry=r)


def create_inference_app(engine: Engine, token: str, *, max_body_bytes: int = DEFAULT_MAX_BODY) -> Starlette:
    if not token:
        raise ValueError("the inference service needs a bearer token")
    metrics = _Metrics()
    for pack in engine.packs:
        metrics.provider.labels(pack["name"], pack["provider"]).set(1)
    expected = f"Bearer {token}".encode()

    def authorised(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    async def screen(request: Request) -> Response:
        if not authorised(request):
            metrics.requests.labels("401").inc()
            return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            metrics.requests.labels("413").inc()
            return JSONResponse({"error": f"body over {max_body_bytes} bytes"}, status_code=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                metrics.requests.labels("413").inc()
                return JSONResponse({"error": f"body over {max_body_bytes} bytes"}, status_code=413)
            chunks.append(chunk)
        started = time.perf_counter()
        try:
            result = await engine.screen(b"".join(chunks), request.headers.get("content-type"))
        except QueueFull:
            metrics.requests.labels("503").inc()
            return JSONResponse({"error": "busy: the queue is full"}, status_code=503, headers={"Retry-After": "1"})
        finally:
            metrics.queue.set(engine.queued)
        metrics.latency.observe(time.perf_counter() - started)
        metrics.requests.labels("200").inc()
        return JSONResponse(result.to_json())

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        return JSONResponse({"ready": True, "packs": engine.packs})

    async def metrics_endpoint(request: Request) -> Response:
        metrics.model_runs.set(engine.model_runs)
        metrics.queue.set(engine.queued)
        for detector, batcher in zip(engine.detectors, engine.batchers, strict=True):
            metrics.mean_batch.labels(detector.name).set(batcher.stats.mean_batch)
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.close()

    return Starlette(routes=[
        Route("/v1/screen", screen, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ], lifespan=lifespan)
