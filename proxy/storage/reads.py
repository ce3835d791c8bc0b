"""Object reads from the upstream (GetObject, HeadObject) as one signed request on the kept session.

Every client GET and HEAD comes this way, so it is the proxy's hottest path: botocore's signer and aiohttp's
stream, without botocore's per-operation machinery. The answer's body is streamed (never the whole object),
its length checked against Content-Length, and every failure comes back as the S3Error S3 would answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp

from proxy.s3.errors import S3Error

#: Response headers passed from the upstream to the client on GET and HEAD.
PASSED_HEADERS = (
    "content-length", "content-type", "etag", "last-modified", "content-range", "accept-ranges",
    "cache-control", "content-disposition", "content-encoding", "content-language", "expires",
    "x-amz-version-id", "x-amz-storage-class", "x-amz-mp-parts-count", "x-amz-tagging-count",
    "x-amz-delete-marker", "x-amz-website-redirect-location", "x-amz-server-side-encryption",
)
STREAM_CHUNK_BYTES = 256 * 1024

#: A read's `extra` (botocore's parameter names, as the callers write them) -> query parameter.
QUERY_PARAMETERS = {
    "VersionId": "versionId", "PartNumber": "partNumber", "ResponseContentType": "response-content-type",
    "ResponseContentLanguage": "response-content-language", "ResponseExpires": "response-expires",
    "ResponseCacheControl": "response-cache-control", "ResponseContentDisposition": "response-content-disposition",
    "ResponseContentEncoding": "response-content-encoding"}
#: ... or -> request header.
HEADER_PARAMETERS = {"Range": "Range", "IfMatch": "If-Match", "IfNoneMatch": "If-None-Match",
                     "IfModifiedSince": "If-Modified-Since", "IfUnmodifiedSince": "If-Unmodified-Since"}


def _wire(value: str) -> str:
    """A header value as the upstream's bytes, in the latin-1 form an ASGI response writes byte for byte
    (aiohttp decodes header bytes as UTF-8; metadata may be UTF-8)."""
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def pick_headers(raw: Mapping[str, str]) -> dict[str, str]:
    """The answer headers a client gets back, names lower-cased."""
    lowered = {name.lower(): value for name, value in raw.items()}
    headers = {name: _wire(lowered[name]) for name in PASSED_HEADERS if name in lowered}
    headers.update({name: _wire(value) for name, value in lowered.items() if name.startswith("x-amz-meta-")})
    return headers


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return format_datetime(aware.astimezone(UTC), usegmt=True)
    return str(value)


def read_request(params: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(query, headers) of a read from botocore-named parameters; an unknown name is a programming error."""
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    for name, value in params.items():
        if value is None or value == "":
            continue
        if name in QUERY_PARAMETERS:
            query[QUERY_PARAMETERS[name]] = _text(value)
        elif name in HEADER_PARAMETERS:
            headers[HEADER_PARAMETERS[name]] = _text(value)
        else:
            raise ValueError(f"unsupported read parameter {name!r}")
    return query, headers


@dataclass
class ObjectResponse:
    """A GET or HEAD answer: status, the headers clients rely on, and (for GET) a streamed body."""

    status: int
    headers: dict[str, str]
    _body: aiohttp.ClientResponse | None = None

    async def iter_body(self, chunk_size: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The body in chunks of at most `chunk_size`; a body shorter than its Content-Length, or an upstream
        breaking off, ends in ServiceUnavailable (never a silently short object)."""
        if self._body is None:
            return
        expected = self.headers.get("content-length")
        received = 0
        try:
            async for chunk in self._body.content.iter_chunked(chunk_size):
                received += len(chunk)
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # the upstream broke off mid-body
            raise S3Error("ServiceUnavailable", f"The storage behind this proxy broke off: {type(exc).__name__}") \
                from exc
        finally:
            await self.close()
        if expected is not None and expected.isdigit() and received != int(expected):
            raise S3Error("ServiceUnavailable", f"The storage behind this proxy sent {received} of {expected} bytes.")

    async def close(self) -> None:
        """Give the connection back (it is closed instead when the body was not read to its end)."""
        body, self._body = self._body, None
        if body is not None:
            body.release()
