"""One small signed request to the upstream, outside botocore's operation models: the sub-resource calls
(ACLs, tagging, attributes, version listings) the proxy relays exactly as the upstream answers them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from defusedxml import ElementTree as SafeElementTree

from proxy.config import LimitsConfig
from proxy.s3.errors import S3Error

#: Largest body read back from a forwarded call.
MAX_FORWARD_RESPONSE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RawResponse:
    """A forwarded call's answer: status, headers and the (bounded) body, as the upstream sent them."""

    status: int
    headers: dict[str, str]
    body: bytes


async def send_signed(method: str, url: str, params: Mapping[str, str], headers: Mapping[str, str], body: bytes,
                      *, credentials: Any, region: str, limits: LimitsConfig, verify_tls: bool) -> RawResponse:
    """Sign with botocore's SigV4 signer (payload hashed) and send with aiohttp, reading a bounded answer."""
    request = AWSRequest(method=method, url=url, params=dict(params), data=body,
                         headers={**headers, "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    prepared = request.prepare()
    timeout = aiohttp.ClientTimeout(sock_connect=limits.upstream_connect_timeout_s,
                                    sock_read=limits.upstream_read_timeout_s)
    url_as_signed = yarl.URL(prepared.url, encoded=True)  # never re-quoted: it is what was signed
    async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method, url_as_signed, headers=dict(prepared.headers), data=body or None,
            ssl=None if verify_tls else False) as response:
        content = await response.content.read(MAX_FORWARD_RESPONSE_BYTES + 1)
        if len(content) > MAX_FORWARD_RESPONSE_BYTES:
            raise S3Error("InternalError", "The storage behind this proxy sent an oversized answer.")
        return RawResponse(response.status, dict(response.headers), content)


def error_fields(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; empty strings when the body is not one."""
    try:
        root = SafeElementTree.fromstring(body) if body else None
    except Exception:  # an unparsable error body: the caller falls back to the status
        return "", ""
    if root is None:
        return "", ""
    return (root.findtext("Code") or "").strip(), (root.findtext("Message") or "").strip()
