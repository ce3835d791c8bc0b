"""pict-rs `media.external_validation`: the proxy's `/validate` endpoint, screened by the same pipeline."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from proxy.config import Config
from proxy.screening.pipeline import Pipeline
from proxy.screening.upload import Upload
from proxy.storage.spool import BodyTooLarge, SpooledBody


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
