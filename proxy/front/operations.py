"""The S3 operations the proxy serves: pass-through reads, and writes held back until the screen has decided."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proxy.front.bodies import read_body
from proxy.front.multipart import MultipartState, new_upload_id
from proxy.s3 import xml
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import AuthContext
from proxy.screening.upload import Screen, Upload, Verdict
from proxy.storage.spool import SpooledBody

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.metrics import ProxyMetrics
    from proxy.storage.upstream import Upstream

#: Keys under this prefix are the proxy's own (multipart staging); clients never see or touch them.
INTERNAL_PREFIX = ".bucketguard/"
HEALTH_CHECK_KEY = "health-check"
MIN_PART_BYTES = 5 * 1024 * 1024
#: Request headers stored with the object, as (header, botocore parameter).
STORED_HEADERS = (("cache-control", "CacheControl"), ("content-disposition", "ContentDisposition"),
                  ("content-language", "ContentLanguage"), ("expires", "Expires"))


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


def _stored_headers(headers: Mapping[str, str]) -> tuple[str, dict[str, str], dict[str, object]]:
    content_type = headers.get("content-type", "")
    metadata = {name[len("x-amz-meta-"):]: value for name, value in headers.items() if name.startswith("x-amz-meta-")}
    extra: dict[str, object] = {}
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
    return content_type, metadata, extra


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _strip_etag(etag: str) -> str:
    return etag.strip().strip('"')


class Operations:
    def __init__(self, config: Config, upstream: Upstream, multipart: MultipartState, screen: Screen,
                 metrics: ProxyMetrics) -> None:
        self.config = config
        self.upstream = upstream
        self.multipart = multipart
        self.screen = screen
        self.metrics = metrics
        self._slots = asyncio.Semaphore(config.limits.max_concurrent_uploads)
        self._waiting = 0

    # ---- reads -------------------------------------------------------------------------------------------

    async def get_object(self, call: Call) -> Response:
        h = call.headers
        response = await self.upstream.get_object(
            call.real_bucket, call.key or "", range=h.get("range"), if_match=h.get("if-match"),
            if_none_match=h.get("if-none-match"), if_modified_since=_http_date(h.get("if-modified-since")),
            if_unmodified_since=_http_date(h.get("if-unmodified-since")))
        size = int(response.headers.get("content-length", "0") or 0)
        self.metrics.bytes_out.inc(size)
        return StreamingResponse(response.iter_body(), status_code=response.status, headers=response.headers)

    async def head_object(self, call: Call) -> Response:
        h = call.headers
        response = await self.upstream.head_object(
            call.real_bucket, call.key or "", if_match=h.get("if-match"), if_none_match=h.get("if-none-match"),
            if_modified_since=_http_date(h.get("if-modified-since")),
            if_unmodified_since=_http_date(h.get("if-unmodified-since")))
        return Response(status_code=response.status, headers=response.headers)

    async def head_bucket(self, call: Call) -> Response:
        await self.upstream.head_bucket(call.real_bucket)
        return Response(status_code=200, headers={"x-amz-bucket-region": self.config.server.region})

    async def bucket_location(self, call: Call) -> Response:
        await self.upstream.head_bucket(call.real_bucket)
        region = self.config.server.region
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint xmlns="'
                f'{xml.NAMESPACE}">{"" if region == "us-east-1" else region}</LocationConstraint>')
        return Response(body, media_type="application/xml")

    async def list_objects(self, call: Call) -> Response:
        q = call.query
        v2 = q.get("list-type") == "2"
        try:
            max_keys = max(0, min(int(q.get("max-keys", "1000")), 1000))
        except ValueError as exc:
            raise S3Error("InvalidArgument", "max-keys must be an integer") from exc
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        start_after = q.get("start-after", "") if v2 else q.get("marker", "")
        page = await self.upstream.list_objects_v2(
            call.real_bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
            continuation_token=q.get("continuation-token", "") if v2 else "", start_after=start_after)
        objects = [xml.ListedObject(o["Key"], o["LastModified"], o["ETag"], int(o["Size"]))
                   for o in page.objects if not o["Key"].startswith(INTERNAL_PREFIX)]
        prefixes = [p for p in page.common_prefixes if not p.startswith(INTERNAL_PREFIX)]
        if v2:
            body = xml.list_objects_v2_result(
                bucket=call.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, objects=objects,
                common_prefixes=prefixes, is_truncated=page.is_truncated,
                continuation_token=q.get("continuation-token", ""), next_continuation_token=page.next_token,
                start_after=q.get("start-after", ""), encoding_type=q.get("encoding-type", ""))
        else:
            last = max([o.key for o in objects] + prefixes, default="")
            body = xml.list_objects_v1_result(
                bucket=call.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, objects=objects,
                common_prefixes=prefixes, is_truncated=page.is_truncated, marker=start_after,
                next_marker=last if page.is_truncated else "", encoding_type=q.get("encoding-type", ""))
        return Response(body, media_type="application/xml")

    async def delete_object(self, call: Call) -> Response:
        await self.upstream.delete_object(call.real_bucket, call.key or "")
        return Response(status_code=204)

    # ---- writes ------------------------------------------------------------------------------------------

    async def _read(self, call: Call, max_bytes: int) -> SpooledBody:
        limits = self.config.limits
        body = await read_body(call.request.stream(), call.headers, call.auth, max_bytes=max_bytes,
                               memory_limit=limits.memory_buffer_bytes, spool_dir=limits.spool_dir or None,
                               timeout_s=limits.client_body_timeout_s)
        self.metrics.bytes_in.inc(body.size)
        if call.auth.streaming:
            self.metrics.chunked_bodies.labels(call.auth.payload).inc()
        return body

    async def _screen(self, upload: Upload) -> Verdict:
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
    def _refusal(verdict: Verdict) -> S3Error:
        if verdict.action == "refuse":
            return S3Error("SlowDown", "This upload cannot be screened right now; retry later.")
        return S3Error("AccessDenied", "Access Denied: this upload was refused by the server's content policy.")

    async def put_object(self, call: Call) -> Response:
        if "x-amz-copy-source" in call.headers:
            raise S3Error("NotImplemented", "CopyObject is not supported through this proxy.")
        body = await self._read(call, self.config.limits.max_object_bytes)
        try:
            key = call.key or ""
            content_type, metadata, extra = _stored_headers(call.headers)
            if not (body.size == 0 and key.rsplit("/", 1)[-1] == HEALTH_CHECK_KEY):
                upload = Upload(call.bucket, call.real_bucket, key, call.auth.access_key, content_type, body,
                                metadata)
                verdict = await self._screen(upload)
                if not verdict.lands:
                    raise self._refusal(verdict)
            etag = await self.upstream.put_object(call.real_bucket, key, body, content_type=content_type,
                                                  metadata=metadata, extra=extra)
        finally:
            body.close()
        return Response(status_code=200, headers={"ETag": etag})

    async def create_multipart_upload(self, call: Call) -> Response:
        key = call.key or ""
        content_type, metadata, extra = _stored_headers(call.headers)
        upload_id = new_upload_id()
        staging_key = f"{INTERNAL_PREFIX}staging/{upload_id}"
        upstream_id = await self.upstream.create_multipart_upload(call.real_bucket, staging_key,
                                                                  content_type=content_type, metadata=metadata,
                                                                  extra=extra)
        await self.multipart.create(upload_id=upload_id, upstream_upload_id=upstream_id, bucket=call.bucket,
                                    real_bucket=call.real_bucket, key=key, staging_key=staging_key,
                                    access_key=call.auth.access_key, content_type=content_type, metadata=metadata)
        return Response(xml.initiate_multipart_result(call.bucket, key, upload_id), media_type="application/xml")

    async def _upload_for(self, call: Call):
        upload = await self.multipart.get(call.query.get("uploadId", ""))
        if upload is None or upload.bucket != call.bucket or upload.key != (call.key or ""):
            raise S3Error("NoSuchUpload")
        return upload

    async def upload_part(self, call: Call) -> Response:
        if "x-amz-copy-source" in call.headers:
            raise S3Error("NotImplemented", "UploadPartCopy is not supported through this proxy.")
        try:
            part_number = int(call.query.get("partNumber", ""))
        except ValueError as exc:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000.") from exc
        if not 1 <= part_number <= self.config.limits.max_multipart_parts:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000.")
        upload = await self._upload_for(call)
        if upload.state != "open":
            raise S3Error("NoSuchUpload")
        already = await self.multipart.total_size(upload.upload_id)
        remaining = self.config.limits.max_object_bytes - already
        if remaining < 0:
            raise S3Error("EntityTooLarge")
        body = await self._read(call, max(remaining, 0))
        try:
            etag = await self.upstream.upload_part(upload.real_bucket, upload.staging_key,
                                                   upload.upstream_upload_id, part_number, body)
            await self.multipart.record_part(upload.upload_id, part_number, body.size, etag, body.md5)
        finally:
            body.close()
        return Response(status_code=200, headers={"ETag": etag})

    async def complete_multipart_upload(self, call: Call) -> Response:
        upload = await self._upload_for(call)
        document = await self._read(call, 2 * 1024 * 1024)
        try:
            requested = xml.parse_complete_multipart(document.read_all(), self.config.limits.max_multipart_parts)
        finally:
            document.close()
        stored = await self.multipart.parts(upload.upload_id)
        for index, (number, etag) in enumerate(requested):
            part = stored.get(number)
            if part is None or _strip_etag(part.etag) != _strip_etag(etag):
                raise S3Error("InvalidPart")
            if index < len(requested) - 1 and part.size < MIN_PART_BYTES:
                raise S3Error("EntityTooSmall", extra={"PartNumber": str(number), "ProposedSize": str(part.size),
                                                       "MinSizeAllowed": str(MIN_PART_BYTES)})
        if await self.multipart.transition(upload.upload_id, ("open",), "completing"):
            parts = [(number, stored[number].etag) for number, _ in requested]
            try:
                await self.upstream.complete_multipart_upload(upload.real_bucket, upload.staging_key,
                                                              upload.upstream_upload_id, parts)
            except BaseException:
                await self.multipart.transition(upload.upload_id, ("completing",), "open")
                raise
        elif not await self.multipart.transition(upload.upload_id, ("staged",), "completing"):
            raise S3Error("NoSuchUpload")
        return await self._screen_staged(call, upload)

    async def _screen_staged(self, call: Call, upload) -> Response:
        """The staging object is complete upstream: read it back, screen it, then land it or drop it."""
        limits = self.config.limits
        body = SpooledBody(memory_limit=limits.memory_buffer_bytes, max_bytes=limits.max_object_bytes,
                           spool_dir=limits.spool_dir or None)
        landed = False
        try:
            await self.upstream.read_object(upload.real_bucket, upload.staging_key, body)
            verdict = await self._screen(Upload(upload.bucket, upload.real_bucket, upload.key, upload.access_key,
                                                upload.content_type, body, upload.metadata))
            if not verdict.lands:
                if verdict.action == "refuse":
                    raise self._refusal(verdict)
                await self.upstream.delete_object(upload.real_bucket, upload.staging_key)
                await self.multipart.transition(upload.upload_id, ("completing",), "aborted")
                await self.multipart.forget_parts(upload.upload_id)
                raise self._refusal(verdict)
            etag = await self.upstream.copy_object(upload.real_bucket, upload.staging_key, upload.real_bucket,
                                                   upload.key)
            landed = True
            await self.upstream.delete_object(upload.real_bucket, upload.staging_key)
            await self.multipart.transition(upload.upload_id, ("completing",), "done")
            await self.multipart.forget_parts(upload.upload_id)
        except BaseException:
            if not landed:
                await self.multipart.transition(upload.upload_id, ("completing",), "staged")
            raise
        finally:
            body.close()
        host = call.headers.get("host", "")
        location = f"http://{host}/{quote(call.bucket)}/{quote(upload.key)}"
        return Response(xml.complete_multipart_result(location, call.bucket, upload.key, etag),
                        media_type="application/xml")

    async def abort_multipart_upload(self, call: Call) -> Response:
        upload = await self._upload_for(call)
        if await self.multipart.transition(upload.upload_id, ("open",), "aborted"):
            await self.upstream.abort_multipart_upload(upload.real_bucket, upload.staging_key,
                                                       upload.upstream_upload_id)
        elif await self.multipart.transition(upload.upload_id, ("staged",), "aborted"):
            await self.upstream.delete_object(upload.real_bucket, upload.staging_key)
        else:
            raise S3Error("NoSuchUpload")
        await self.multipart.forget_parts(upload.upload_id)
        return Response(status_code=204)
