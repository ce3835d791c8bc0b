"""What every S3 operation handler shares: the verified call, request-header helpers, reading a body and
asking the screen (bounded), and the one rule for the proxy's internal keys."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from proxy.front.bodies import read_body
from proxy.s3.chunked import Checksum
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import AuthContext
from proxy.screening.upload import Screen, Upload, Verdict
from proxy.storage.spool import SpooledBody

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.front.multipart import MultipartState
    from proxy.metrics import ProxyMetrics
    from proxy.storage.upstream import Upstream

log = logging.getLogger("bucketguard.front")

#: Keys under this prefix are the proxy's own (multipart staging); clients never see or touch them.
INTERNAL_PREFIX = ".bucketguard/"
STAGING_PREFIX = INTERNAL_PREFIX + "staging/"
#: Request headers stored with the object, as (header, botocore parameter).
STORED_HEADERS = (("cache-control", "CacheControl"), ("content-disposition", "ContentDisposition"),
                  ("content-language", "ContentLanguage"), ("expires", "Expires"), ("x-amz-tagging", "Tagging"),
                  ("x-amz-storage-class", "StorageClass"),
                  ("x-amz-website-redirect-location", "WebsiteRedirectLocation"), ("x-amz-acl", "ACL"),
                  ("x-amz-grant-read", "GrantRead"), ("x-amz-grant-read-acp", "GrantReadACP"),
                  ("x-amz-grant-write-acp", "GrantWriteACP"), ("x-amz-grant-full-control", "GrantFullControl"),
                  ("x-amz-server-side-encryption", "ServerSideEncryption"),
                  ("x-amz-checksum-algorithm", "ChecksumAlgorithm"))
#: Checksum algorithms (x-amz-checksum-<name>) passed on to the upstream, which stores and checks them too.
CHECKSUM_PARAMETERS = {"crc32": "ChecksumCRC32", "crc32c": "ChecksumCRC32C", "sha1": "ChecksumSHA1",
                       "sha256": "ChecksumSHA256"}
#: Largest XML document a client may send (DeleteObjects, tagging, ACLs, CompleteMultipartUpload).
MAX_XML_BYTES = 2 * 1024 * 1024


@dataclass
class Call:
    """One verified S3 request: what it addresses and who signed it."""

    request: Request
    headers: Mapping[str, str]
    query: Mapping[str, str]
    auth: AuthContext
    bucket: str
    real_bucket: str
    key: str | None
    request_id: str
    operation: str = ""
    #: Header values as the client sent them, read as UTF-8 (metadata may be UTF-8).
    raw_headers: tuple[tuple[str, str], ...] = ()


def is_internal(key: str) -> bool:
    return key.startswith(INTERNAL_PREFIX)


def metadata_of(call: Call) -> dict[str, str]:
    """x-amz-meta-* as the client signed them (UTF-8), names lower-cased as S3 stores them."""
    source = call.raw_headers or tuple(call.headers.items())
    return {name[len("x-amz-meta-"):]: value for name, value in source if name.startswith("x-amz-meta-")}


def stored_headers(call: Call) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(content type, metadata, botocore parameters) of what a write stores with the object."""
    headers = call.headers
    content_type = headers.get("content-type", "")
    extra: dict[str, Any] = {}
    for header, parameter in STORED_HEADERS:
        if header in headers:
            extra[parameter] = headers[header]
    if "expires" in headers:
        try:
            extra["Expires"] = parsedate_to_datetime(headers["expires"])
        except (TypeError, ValueError):
            extra.pop("Expires")
    encoding = ",".join(e for e in (p.strip() for p in headers.get("content-encoding", "").split(","))
                        if e and e.lower() != "aws-chunked")
    if encoding:
        extra["ContentEncoding"] = encoding
    return content_type, metadata_of(call), extra


def http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def strip_etag(etag: str) -> str:
    return etag.strip().strip('"')


def quote_etag(etag: str) -> str:
    """ETags are quoted in headers and XML alike, as S3 writes them."""
    return f'"{strip_etag(etag)}"'


def write_conditions(headers: Mapping[str, str]) -> dict[str, str]:
    """If-Match / If-None-Match of a conditional write, as botocore parameters (the upstream enforces them)."""
    conditions = {}
    if headers.get("if-match"):
        conditions["IfMatch"] = headers["if-match"]
    if headers.get("if-none-match"):
        conditions["IfNoneMatch"] = headers["if-none-match"]
    return conditions


class Handlers:
    """State and helpers the operation groups (objects, buckets, multipart, copy) share."""

    def __init__(self, config: Config, upstream: Upstream, multipart: MultipartState, screen: Screen,
                 metrics: ProxyMetrics) -> None:
        self.config = config
        self.upstream = upstream
        self.multipart = multipart
        self.screen = screen
        self.metrics = metrics
        #: Told once the upstream holds an object the screen let through (deferred scans start then).
        self.on_landed: Callable[[Upload], Awaitable[None]] | None = None
        #: Told when the upstream write of an upload the screen let through (allow, flag) failed: whatever the
        #: screen recorded about it (a flag) must then say the object never landed.
        self.on_write_failed: Callable[[Upload, Verdict, BaseException], Awaitable[None]] | None = None
        self._slots = asyncio.Semaphore(config.limits.max_concurrent_uploads)
        self._waiting = 0

    def new_body(self) -> SpooledBody:
        limits = self.config.limits
        return SpooledBody(memory_limit=limits.memory_buffer_bytes, max_bytes=limits.max_object_bytes,
                           spool_dir=limits.spool_dir or None)

    async def read(self, call: Call, max_bytes: int) -> SpooledBody:
        limits = self.config.limits
        body = await read_body(call.request.stream(), call.headers, call.auth, max_bytes=max_bytes,
                               memory_limit=limits.memory_buffer_bytes, spool_dir=limits.spool_dir or None,
                               timeout_s=limits.client_body_timeout_s)
        self.metrics.bytes_in.inc(body.size)
        if call.auth.streaming:
            self.metrics.chunked_bodies.labels(call.auth.payload).inc()
        return body

    async def read_small(self, call: Call) -> bytes:
        """A small request document (XML), verified against its signature and digests like any body."""
        body = await self.read(call, MAX_XML_BYTES)
        try:
            return body.read_all()
        finally:
            body.close()

    async def landed(self, upload: Upload) -> None:
        if self.on_landed is not None:
            await self.on_landed(upload)

    async def write_failed(self, upload: Upload, verdict: Verdict, error: BaseException) -> None:
        """Report a failed upstream write of a let-through upload; never masks the write's own error."""
        if self.on_write_failed is None:
            return
        try:
            await self.on_write_failed(upload, verdict, error)
        except Exception:  # the client still gets the write's error; the hook's failure is logged
            log.exception("recording a failed write of %s/%s failed", upload.bucket, upload.key)

    async def screen_upload(self, upload: Upload) -> Verdict:
        """Ask the screen, with a bounded number of uploads screened at once and a bounded wait."""
        if self._waiting >= self.config.limits.max_waiting_uploads:
            raise S3Error("SlowDown")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self.metrics.uploads_in_flight.inc()
        try:
            verdict = await self.screen(upload)
        finally:
            self.metrics.uploads_in_flight.dec()
            self._slots.release()
        self.metrics.screened.labels(verdict.action).inc()
        return verdict

    @staticmethod
    def refusal(verdict: Verdict) -> S3Error:
        if verdict.action == "refuse":
            return S3Error("SlowDown", "This upload cannot be screened right now; retry later.")
        return S3Error("AccessDenied", "Access Denied: this upload was refused by the server's content policy.")


def checksum_parameters(echo: dict[str, str]) -> dict[str, str]:
    """The botocore parameters that pass a verified checksum on to the upstream (value and algorithm: some
    servers store a checksum only when the algorithm is named too)."""
    params: dict[str, str] = {}
    for name, value in echo.items():
        algorithm = name[len("x-amz-checksum-"):]
        if algorithm in CHECKSUM_PARAMETERS:
            params[CHECKSUM_PARAMETERS[algorithm]] = value
            params["ChecksumAlgorithm"] = algorithm.upper()
    return params


async def checksum_echo(call: Call, body: SpooledBody) -> dict[str, str]:
    """The x-amz-checksum-* S3 echoes in a PutObject answer: the header as sent (read_body verified it), or
    for a trailer checksum (verified by the aws-chunked decoder) the same algorithm over the stored bytes."""
    for name, value in call.headers.items():
        if name.startswith("x-amz-checksum-") and name != "x-amz-checksum-type":
            return {name: value}
    for name in (n.strip().lower() for n in call.headers.get("x-amz-trailer", "").split(",")):
        if name.startswith("x-amz-checksum-"):
            checksum = Checksum(name[len("x-amz-checksum-"):])
            async for chunk in body.chunks():
                checksum.update(chunk)
            return {name: checksum.b64digest()}
    return {}
