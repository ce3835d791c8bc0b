"""The proxy's ASGI app: the S3 front, its own health and metrics endpoints, and the start-up wiring.

Routing rule for the proxy's own endpoints (`/healthz`, `/readyz`, `/metrics`, `/admin/...`, `/validate`,
`/federation/...`, `/_bucketguard/...`): they answer only path-style requests that carry no S3 authentication
(no SigV4 or SigV2 `Authorization`, no presigned query; a `Bearer` token is theirs). A request an S3 client
signed is S3 whatever its path, so a bucket of one of those names (served in pass-through mode; refused as a
mapped name) answers S3 XML like any other. Everything else is S3.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from proxy.config import Config
from proxy.front.calls import STAGING_PREFIX
from proxy.front.multipart import MultipartState
from proxy.front.operations import INTERNAL_PREFIX, Call, Operations
from proxy.logs import ACCESS_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.readiness import DatabaseCheck, readiness_problems
from proxy.s3 import sigv4
from proxy.s3.addressing import bucket_from_host, resolve
from proxy.s3.errors import S3Error
from proxy.s3.operations_table import describe, operation_for
from proxy.screening.upload import Screen, allow_all
from proxy.state import Database
from proxy.storage.upstream import Upstream

log = logging.getLogger("bucketguard.gateway")
access_log = logging.getLogger(ACCESS_LOGGER)

#: Path-style first segments of the proxy's own endpoints (for requests without S3 authentication).
RESERVED_NAMES = frozenset({"healthz", "readyz", "metrics", "admin", "validate", "_bucketguard", "federation"})
#: Query parameters that make a request a presigned S3 one (SigV4, and boto3's default SigV2 form).
PRESIGNED_MARKERS = frozenset({b"X-Amz-Algorithm", b"X-Amz-Credential", b"X-Amz-Signature", b"AWSAccessKeyId"})


@dataclass
class AppState:
    """Everything the running app holds; extensions (pipeline, admin, jobs) hang their parts here."""

    config: Config
    db: Database
    upstream: Upstream
    metrics: ProxyMetrics
    operations: Operations
    extras: dict[str, Any] = field(default_factory=dict)


#: errno values of a full disk (spool or quarantine), a quota or a file-size limit reached: the client should
#: retry later, nothing has landed.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _has_body(headers: Any) -> bool:
    return headers.get("content-length", "0") not in ("0", "") or "transfer-encoding" in headers


def _header_text(value: bytes) -> str:
    """Header values as the client signed them: UTF-8 when they are (x-amz-meta-*), else latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _parse_query(raw: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in raw.split("&") if raw else []:
        if part:
            name, _, value = part.partition("=")
            params.setdefault(unquote(name), unquote(value))
    return params


class S3Front:
    """The ASGI app for S3 requests: verify, dispatch, answer errors as S3 XML, count and log."""

    def __init__(self, get_state: Callable[[], AppState]) -> None:
        self._get_state = get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._get_state()
        request = Request(scope, receive)
        request_id = secrets.token_hex(8).upper()
        started = time.perf_counter()
        method = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_query = scope.get("query_string", b"").decode("latin-1")
        query = _parse_query(raw_query)
        header_list = [(k.decode("latin-1").lower(), _header_text(v)) for k, v in scope["headers"]]
        headers = request.headers
        operation = "Unknown"
        access_key = ""
        bucket = key = None
        try:
            target = resolve(headers.get("host", ""), raw_path, state.config.server.base_domains)
            bucket, key = target.bucket, target.key
            operation = describe(method, bucket, key, query)
            auth = sigv4.verify(
                method, raw_path.decode("latin-1"), raw_query, header_list, secrets=state.config.client_secret,
                region=state.config.server.region, max_skew_s=state.config.limits.max_clock_skew_s,
                max_expires_s=state.config.limits.max_presign_expires_s, session_tokens=self._session_token(state))
            access_key = auth.access_key
            operation = operation_for(method, bucket, key, query, headers)  # after auth, as S3 answers
            response = await self._dispatch(state, request, method, query, auth, bucket, key, request_id,
                                            operation, tuple(header_list))
        except S3Error as error:
            response = self._error_response(error, method, request_id, resource=str(scope.get("path", "")))
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                log.exception("unexpected failure", extra={"fields": {"request_id": request_id}})
                error = S3Error("InternalError")
            else:  # spool or quarantine disk full: nothing landed, the client retries later
                log.error("disk full: %s", exc, extra={"fields": {"request_id": request_id}})
                error = S3Error("SlowDown", "The server is out of disk space for uploads; retry later.")
            response = self._error_response(error, method, request_id, resource="")
        except Exception:
            log.exception("unexpected failure", extra={"fields": {"request_id": request_id}})
            response = self._error_response(S3Error("InternalError"), method, request_id, resource="")
        response.headers["x-amz-request-id"] = request_id
        if response.status_code >= 300 and _has_body(headers):
            # An error may be answered before the body was read (or read to its end): the rest of it must
            # never be taken for the next request on this connection, so the connection ends here.
            response.headers["connection"] = "close"
        await response(scope, receive, send)
        elapsed = time.perf_counter() - started
        metrics = state.metrics
        metrics.requests.labels(operation, str(response.status_code)).inc()
        metrics.latency.labels(operation).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"fields": {
                "request_id": request_id, "client": access_key, "operation": operation, "bucket": bucket,
                "key": key, "status": response.status_code, "duration_ms": round(elapsed * 1000, 2)}})

    @staticmethod
    def _session_token(state: AppState) -> Callable[[str], str] | None:
        tokens = {c.access_key: c.session_token for c in state.config.clients if c.session_token}
        return (lambda key: tokens.get(key, "")) if tokens else None

    @staticmethod
    def _error_response(error: S3Error, method: str, request_id: str, resource: str) -> Response:
        if error.status == 304 or method == "HEAD":
            return Response(status_code=error.status, headers=error.headers)
        error.resource = error.resource or resource
        return Response(error.to_xml(request_id), status_code=error.status, headers=error.headers,
                        media_type="application/xml")

    async def _dispatch(self, state: AppState, request: Request, method: str, query: dict[str, str],
                        auth: sigv4.AuthContext, bucket: str | None, key: str | None, request_id: str,
                        operation: str, raw_headers: tuple[tuple[str, str], ...]) -> Response:
        ops = state.operations
        real_bucket = ""
        if bucket is not None:
            served = ops.served_real_bucket(bucket)  # never the quarantine bucket, whatever the map
            if served is None:
                if state.config.quarantine.store == "s3" and bucket == state.config.quarantine.bucket:
                    raise S3Error("AccessDenied", "This bucket is not served through this proxy.", resource=bucket)
                raise S3Error("NoSuchBucket", resource=bucket)
            real_bucket = served
        if key is not None and key.startswith(INTERNAL_PREFIX):
            raise S3Error("AccessDenied", "This key is reserved by the proxy.")
        call = Call(request, request.headers, query, auth, bucket or "", real_bucket, key, request_id, operation,
                    raw_headers)
        return await ops.handler(operation)(call)


def carries_s3_auth(scope: Scope) -> bool:
    """Whether a request is signed the way S3 clients sign (valid or not: verification judges that)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.lstrip().startswith((b"AWS4-", b"AWS "))
    query: bytes = scope.get("query_string", b"")
    return any(part.partition(b"=")[0] in PRESIGNED_MARKERS for part in query.split(b"&")) if query else False


class Gateway:
    """The outer ASGI callable: virtual-host requests go straight to S3; path-style ones are routed."""

    def __init__(self, app: Starlette, s3: S3Front, base_domains: tuple[str, ...]) -> None:
        self.app = app
        self.s3 = s3
        self._base_domains = base_domains

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            first = scope["path"].lstrip("/").split("/", 1)[0]
            if first not in RESERVED_NAMES or bucket_from_host(host, self._base_domains) is not None \
                    or carries_s3_auth(scope):
                await self.s3(scope, receive, send)
                return
        await self.app(scope, receive, send)


#: Extensions called at start-up with the AppState, returning routes to mount and an optional async
#: clean-up. The screening pipeline, the admin page and the job endpoints plug in here.
Extension = Callable[[AppState], "Any"]


def create_app(config: Config, *, screen: Screen | None = None,
               extensions: tuple[Extension, ...] = ()) -> Gateway:
    """The proxy app; `screen` replaces the configured screening (tests plug in their own)."""
    metrics = ProxyMetrics()
    holder: dict[str, AppState] = {}

    def get_state() -> AppState:
        return holder["state"]

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        state = get_state()
        problems = await readiness_problems(state.config, state.extras["database_check"], state.upstream)
        if problems:
            return PlainTextResponse("not ready:\n" + "".join(f"{p}\n" for p in problems), status_code=503)
        return PlainTextResponse("ready\n")

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(config.database.url)
        await db.migrate()
        upstream = Upstream(config.upstream, config.limits,
                            on_error=lambda op: metrics.upstream_errors.labels(op).inc())
        await upstream.start()
        state = AppState(config, db, upstream, metrics,
                         Operations(config, upstream, MultipartState(db), screen or allow_all, metrics))
        holder["state"] = state
        state.extras["database_check"] = DatabaseCheck(db)
        app.state.bucketguard = state
        cleanups = []
        if config.limits.janitor_interval_s > 0:
            from proxy.jobs.janitor import Janitor  # jobs never import front; the app hands the janitor its parts

            janitor = Janitor(state.operations.multipart, upstream, state.operations.abort_upload,
                              staging_prefix=STAGING_PREFIX, served_buckets=config.bucket_map.values(),
                              interval_s=config.limits.janitor_interval_s, age_s=config.limits.stale_upload_age_s)
            janitor.start()
            state.extras["janitor"] = janitor
            cleanups.append(janitor.stop)
        try:
            for extension in extensions:
                result = await extension(state)
                if result is not None:
                    extra_routes, cleanup = result
                    app.router.routes.extend(extra_routes)
                    if cleanup is not None:
                        cleanups.append(cleanup)
            yield
        finally:
            for cleanup in reversed(cleanups):
                await cleanup()
            await upstream.close()
            await db.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    return Gateway(app, S3Front(get_state), config.server.base_domains)
