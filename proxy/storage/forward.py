"""Signed requests to the upstream outside botocore's operation models, on one kept aiohttp session.

Two kinds of call go this way: the sub-resource calls (ACLs, tagging, attributes, version listings) the proxy
relays exactly as the upstream answers them, and the object reads (GetObject, HeadObject, see
:mod:`proxy.storage.reads`), where botocore's per-operation machinery (parameter building, endpoint rules,
event hooks, response parsing) was most of the proxy's CPU on a GET. Signing is botocore's own SigV4 signer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from defusedxml import ElementTree as SafeElementTree

from proxy.config import LimitsConfig
from proxy.s3.errors import S3Error

#: Largest body read back from a forwarded call (or from an error answer).
MAX_FORWARD_RESPONSE_BYTES = 8 * 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Upstream answers worth one more try (botocore's standard mode retried them too; the client retries again).
RETRIED_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RawResponse:
    """A forwarded call's answer: status, headers and the (bounded) body, as the upstream sent them."""

    status: int
    headers: dict[str, str]
    body: bytes


class SignedSession:
    """A kept aiohttp session (bounded pool, the configured timeouts, no transparent decompression) whose requests
    are signed with botocore's SigV4 signer and the upstream's own (possibly refreshed) credentials."""

    def __init__(self, *, credentials: Callable[[], Awaitable[Any]], region: str, limits: LimitsConfig,
                 verify_tls: bool, pool_size: int) -> None:
        self._credentials = credentials
        self._region = region
        self._limits = limits
        self._verify_tls = verify_tls
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=None if self._verify_tls else False)
            timeout = aiohttp.ClientTimeout(sock_connect=self._limits.upstream_connect_timeout_s,
                                            sock_read=self._limits.upstream_read_timeout_s)
            # Bytes pass as stored: never decompressed, and no Accept-Encoding that invites a server to encode.
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                                  skip_auto_headers=("Accept-Encoding",))
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def open(self, method: str, url: str, params: Mapping[str, str], headers: Mapping[str, str],
                   body: bytes = b"") -> aiohttp.ClientResponse:
        """Send one signed request (payload hashed) and return the answer unread: the caller releases it.
        Answers in RETRIED_STATUSES and failures to connect or to answer are tried once more."""
        credentials = await self._credentials()
        request = AWSRequest(method=method, url=url, params=dict(params), data=body, headers={
            **headers, "x-amz-content-sha256": hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256})
        S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        prepared = request.prepare()
        url_as_signed = yarl.URL(prepared.url, encoded=True)  # never re-quoted: it is what was signed
        session = self._open_session()
        for attempt in (1, 2):
            try:
                response = await session.request(method, url_as_signed, headers=dict(prepared.headers),
                                                 data=body or None)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == 2:
                    raise
                continue
            if response.status not in RETRIED_STATUSES or attempt == 2:
                return response
            response.release()
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def send(self, method: str, url: str, params: Mapping[str, str], headers: Mapping[str, str],
                   body: bytes = b"") -> RawResponse:
        """One signed request whose whole (bounded) answer is read."""
        response = await self.open(method, url, params, headers, body)
        try:
            return RawResponse(response.status, dict(response.headers), await read_bounded(response))
        finally:
            response.release()


async def read_bounded(response: aiohttp.ClientResponse) -> bytes:
    content = await response.content.read(MAX_FORWARD_RESPONSE_BYTES + 1)
    if len(content) > MAX_FORWARD_RESPONSE_BYTES:
        raise S3Error("InternalError", "The storage behind this proxy sent an oversized answer.")
    return content


def error_fields(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; empty strings when the body is not one."""
    try:
        root = SafeElementTree.fromstring(body) if body else None
    except Exception:  # an unparsable error body: the caller falls back to the status
        return "", ""
    if root is None:
        return "", ""
    return (root.findtext("Code") or "").strip(), (root.findtext("Message") or "").strip()
