"""Multipart uploads: parts go to a staging object; Complete screens the whole object before it lands.

Every non-final state can be recovered. `completing` holds a lease the completer renews while it screens;
once it runs out (the proxy died), a retried Complete or an Abort takes the upload over, and the janitor
aborts what nobody comes back for. The landed object is assembled by part copies with the client's part
boundaries, so its ETag is the multipart `-N` ETag the client computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from proxy.front.bodies import check_content_encoding
from proxy.front.calls import (
    STAGING_PREFIX,
    Call,
    Handlers,
    checksum_echo,
    checksum_parameters,
    quote_etag,
    stored_headers,
    strip_etag,
    write_conditions,
)
from proxy.front.multipart import MultipartUpload, new_upload_id
from proxy.s3 import listings, xml
from proxy.s3.errors import S3Error
from proxy.screening.upload import Upload
from proxy.storage.spool import BodyTooLarge, SpooledBody
from proxy.storage.versions import delete_every_version

MIN_PART_BYTES = 5 * 1024 * 1024
#: What CreateMultipartUpload may ask of the object (botocore parameters), kept with the upload for the landing.
CARRIED_SETTINGS = frozenset({"ACL", "GrantRead", "GrantReadACP", "GrantWriteACP", "GrantFullControl", "Tagging",
                              "StorageClass", "WebsiteRedirectLocation", "ServerSideEncryption"})
#: Stored headers copied from the staging object to the landed one, as (header, botocore parameter).
LANDED_HEADERS = (("cache-control", "CacheControl"), ("content-disposition", "ContentDisposition"),
                  ("content-language", "ContentLanguage"), ("content-encoding", "ContentEncoding"),
                  ("x-amz-storage-class", "StorageClass"),
                  ("x-amz-website-redirect-location", "WebsiteRedirectLocation"))


def _parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)


def _int_param(query: Any, name: str, default: int, top: int) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError as exc:
        raise S3Error("InvalidArgument", f"{name} must be an integer") from exc
    if value < 0:
        raise S3Error("InvalidArgument", f"{name} must not be negative")
    return min(value, top)


def multipart_etag(part_etags: list[str]) -> str:
    """S3's multipart ETag: the MD5 of the parts' MD5s, then `-N` (for an upstream that does not say it)."""
    digest = hashlib.md5(b"".join(bytes.fromhex(strip_etag(e)) for e in part_etags))  # noqa: S324 - S3's ETag
    return f'"{digest.hexdigest()}-{len(part_etags)}"'


class MultipartOperations(Handlers):
    @property
    def lease_s(self) -> float:
        """A completer's lease (`limits.multipart_lease_s`), renewed every third of it while it screens."""
        return self.config.limits.multipart_lease_s

    async def create_multipart_upload(self, call: Call) -> Response:
        check_content_encoding(call.headers)  # the landed object's encoding is set here, not on the parts
        key = call.key or ""
        content_type, metadata, extra = stored_headers(call)
        upload_id = new_upload_id()
        staging_key = f"{STAGING_PREFIX}{upload_id}"
        upstream_id = await self.upstream.create_multipart_upload(call.real_bucket, staging_key,
                                                                  content_type=content_type, metadata=metadata,
                                                                  extra=extra)
        settings = {name: value for name, value in extra.items() if name in CARRIED_SETTINGS}
        await self.multipart.create(upload_id=upload_id, upstream_upload_id=upstream_id, bucket=call.bucket,
                                    real_bucket=call.real_bucket, key=key, staging_key=staging_key,
                                    access_key=call.auth.access_key, content_type=content_type, metadata=metadata,
                                    settings=settings)
        return Response(xml.initiate_multipart_result(call.bucket, key, upload_id), media_type="application/xml")

    async def upload_for(self, call: Call) -> MultipartUpload:
        upload = await self.multipart.get(call.query.get("uploadId", ""))
        if upload is None or upload.bucket != call.bucket or upload.key != (call.key or ""):
            raise S3Error("NoSuchUpload")
        return upload

    def part_number(self, call: Call) -> int:
        try:
            number = int(call.query.get("partNumber", ""))
        except ValueError as exc:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000.") from exc
        if not 1 <= number <= self.config.limits.max_multipart_parts:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000.")
        return number

    async def open_upload(self, call: Call) -> MultipartUpload:
        upload = await self.upload_for(call)
        if upload.state != "open":
            raise S3Error("NoSuchUpload")
        return upload

    async def upload_part(self, call: Call) -> Response:
        part_number = self.part_number(call)
        upload = await self.open_upload(call)
        already = await self.multipart.total_size(upload.upload_id)
        remaining = self.config.limits.max_object_bytes - already
        if remaining < 0:
            raise S3Error("EntityTooLarge")
        body = await self.read(call, max(remaining, 0))
        try:
            checksum = await checksum_echo(call, body)
            etag = await self.upstream.upload_part(upload.real_bucket, upload.staging_key,
                                                   upload.upstream_upload_id, part_number, body,
                                                   checksum_parameters(checksum))
            await self.multipart.record_part(upload.upload_id, part_number, body.size, etag, body.md5)
        finally:
            body.close()
        return Response(status_code=200, headers={"ETag": quote_etag(etag), **checksum})

    def _completed(self, call: Call, upload: MultipartUpload) -> Response:
        host = call.headers.get("host", "")
        location = f"http://{host}/{quote(call.bucket)}/{quote(upload.key)}"
        return Response(xml.complete_multipart_result(location, call.bucket, upload.key,
                                                      quote_etag(upload.final_etag)),
                        media_type="application/xml")

    async def complete_multipart_upload(self, call: Call) -> Response:
        upload = await self.upload_for(call)
        if upload.state == "done":
            return self._completed(call, upload)  # a repeated Complete after success answers the same
        requested = xml.parse_complete_multipart(await self.read_small(call), self.config.limits.max_multipart_parts,
                                                 check_order=False)
        stored = await self.multipart.parts(upload.upload_id)
        total = 0
        for index, (number, etag) in enumerate(requested):
            part = stored.get(number)
            if part is None or strip_etag(part.etag) != strip_etag(etag):
                raise S3Error("InvalidPart")
            if index < len(requested) - 1 and part.size < MIN_PART_BYTES:
                raise S3Error("EntityTooSmall", extra={"PartNumber": str(number), "ProposedSize": str(part.size),
                                                       "MinSizeAllowed": str(MIN_PART_BYTES)})
            total += part.size
        xml.check_part_order(requested)
        limit = self.config.limits.max_object_bytes
        if total > limit:  # parts sent at the same moment can pass the per-part check together
            raise S3Error("EntityTooLarge", extra={"ProposedSize": str(total), "MaxSizeAllowed": str(limit)})
        conditions = write_conditions(call.headers)
        await self._check_conditions(upload, conditions)
        taken = await self.multipart.claim_completion(upload.upload_id, self.lease_s)
        if taken is None:
            current = await self.multipart.get(upload.upload_id)
            if current is not None and current.state == "done" and current.key == upload.key:
                return self._completed(call, current)
            if current is not None and current.state == "completing":
                raise S3Error("SlowDown", "This upload is being completed by another request; retry.")
            raise S3Error("NoSuchUpload")
        heartbeat = asyncio.create_task(self._heartbeat(upload.upload_id))
        try:
            sizes = [stored[number].size for number, _ in requested]
            parts = [(number, stored[number].etag) for number, _ in requested]
            staged = await self._stage(upload, taken, parts)
            etag = await self._screen_and_land(upload, staged, sizes, conditions)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        done = await self.multipart.get(upload.upload_id)
        return self._completed(call, done or upload)

    async def _check_conditions(self, upload: MultipartUpload, conditions: dict[str, str]) -> None:
        """Fail early (412) when a conditional Complete cannot hold; the landing enforces it again upstream."""
        if not conditions:
            return
        try:
            head = await self.upstream.head_object(upload.real_bucket, upload.key)
        except S3Error as error:
            if error.code not in ("NoSuchKey", "NotFound") and error.status != 404:
                raise
            if "IfMatch" in conditions:
                raise S3Error("NoSuchKey") from error
            return
        if conditions.get("IfNoneMatch") == "*":
            raise S3Error("PreconditionFailed", extra={"Condition": "If-None-Match"})
        if "IfMatch" in conditions and strip_etag(conditions["IfMatch"]) not in (
                "*", strip_etag(head.headers.get("etag", ""))):
            raise S3Error("PreconditionFailed", extra={"Condition": "If-Match"})

    async def _heartbeat(self, upload_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.multipart.renew_lease(upload_id, self.lease_s)

    async def _stage(self, upload: MultipartUpload, taken: str, parts: list[tuple[int, str]]) -> bool:
        """Make sure the staging object is complete upstream; on failure give the upload back as it was."""
        if taken == "staged":
            return True
        try:
            if taken == "completing":  # taken over from a completer that died: was the staging object made?
                try:
                    await self.upstream.head_object(upload.real_bucket, upload.staging_key)
                    return True
                except S3Error as error:
                    if error.status != 404:
                        raise
            await self.upstream.complete_multipart_upload(upload.real_bucket, upload.staging_key,
                                                          upload.upstream_upload_id, parts)
        except S3Error as error:
            if error.code == "NoSuchUpload":
                await self.multipart.transition(upload.upload_id, ("completing",), "aborted")
                await self.multipart.forget_parts(upload.upload_id)
            else:
                await self.multipart.transition(upload.upload_id, ("completing",), "open")
            raise
        except BaseException:
            await self.multipart.transition(upload.upload_id, ("completing",), "open")
            raise
        return True

    async def _screen_and_land(self, upload: MultipartUpload, staged: bool, sizes: list[int],
                               conditions: dict[str, str]) -> str:
        """The staging object is complete: read it back, screen it, then land it (part copies) or drop it."""
        body = self.new_body()
        landed = False
        try:
            try:
                headers = await self.upstream.read_object(upload.real_bucket, upload.staging_key, body)
            except BodyTooLarge as exc:
                raise S3Error("EntityTooLarge", extra={
                    "MaxSizeAllowed": str(self.config.limits.max_object_bytes)}) from exc
            screened = Upload(upload.bucket, upload.real_bucket, upload.key, upload.access_key,
                              upload.content_type, body, upload.metadata)
            verdict = await self.screen_upload(screened)
            if not verdict.lands:
                if verdict.action == "refuse":
                    raise self.refusal(verdict)
                # Record the end first: a crash before the delete leaves an orphan the janitor removes.
                await self.multipart.transition(upload.upload_id, ("completing",), "aborted")
                await delete_every_version(self.upstream, upload.real_bucket, upload.staging_key)
                await self.multipart.forget_parts(upload.upload_id)
                raise self.refusal(verdict)
            try:
                etag = await self._land(upload, headers, sizes, conditions)
            except BaseException as error:
                await self.write_failed(screened, verdict, error)
                raise
            landed = True
            await self.landed(screened)
            await self.multipart.finish(upload.upload_id, etag)
            await delete_every_version(self.upstream, upload.real_bucket, upload.staging_key)
            await self.multipart.forget_parts(upload.upload_id)
            return etag
        except BaseException:
            if not landed:
                await self.multipart.transition(upload.upload_id, ("completing",), "staged")
            raise
        finally:
            body.close()

    async def _land(self, upload: MultipartUpload, headers: dict[str, str], sizes: list[int],
                    conditions: dict[str, str]) -> str:
        """Copy the staging object to the client's key part by part, so the ETag keeps its `-N` form."""
        extra: dict[str, Any] = {p: headers[h] for h, p in LANDED_HEADERS if h in headers}
        extra.update(upload.settings)  # ACL, tags, storage class... asked for at CreateMultipartUpload
        landing = await self.upstream.create_multipart_upload(upload.real_bucket, upload.key,
                                                              content_type=upload.content_type,
                                                              metadata=upload.metadata, extra=extra)
        try:
            parts: list[tuple[int, str]] = []
            start = 0
            for number, size in enumerate(sizes, start=1):
                if size == 0:  # an empty part (S3 allows the last one to be) has no byte range to copy
                    empty = SpooledBody.from_bytes(b"")
                    etag = await self.upstream.upload_part(upload.real_bucket, upload.key, landing, number, empty)
                else:
                    result = await self.upstream.upload_part_copy(
                        upload.real_bucket, upload.staging_key, upload.real_bucket, upload.key, landing, number,
                        {"CopySourceRange": f"bytes={start}-{start + size - 1}"})
                    etag = str(result["ETag"])
                parts.append((number, etag))
                start += size
            etag = await self.upstream.complete_multipart_upload(upload.real_bucket, upload.key, landing, parts,
                                                                 conditions)
            return etag if strip_etag(etag) else multipart_etag([e for _, e in parts])
        except BaseException:
            with contextlib.suppress(S3Error):
                await self.upstream.abort_multipart_upload(upload.real_bucket, upload.key, landing)
            raise

    async def abort_multipart_upload(self, call: Call) -> Response:
        upload = await self.upload_for(call)
        await self.abort_upload(upload)
        return Response(status_code=204)

    async def abort_upload(self, upload: MultipartUpload) -> None:
        """Abort from any non-final state; NoSuchUpload when final or still held by a live completer."""
        left = await self.multipart.claim_abort(upload.upload_id)
        if left is None:
            raise S3Error("NoSuchUpload")
        if left in ("open", "completing"):
            with contextlib.suppress(S3Error):
                await self.upstream.abort_multipart_upload(upload.real_bucket, upload.staging_key,
                                                           upload.upstream_upload_id)
        if left in ("staged", "completing"):
            await delete_every_version(self.upstream, upload.real_bucket, upload.staging_key)
        await self.multipart.forget_parts(upload.upload_id)

    async def list_multipart_uploads(self, call: Call) -> Response:
        q = call.query
        max_uploads = _int_param(q, "max-uploads", 1000, 1000)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        rows = await self.multipart.live_uploads(call.bucket, prefix=prefix, key_marker=q.get("key-marker", ""),
                                                 upload_id_marker=q.get("upload-id-marker", ""),
                                                 limit=max_uploads + 1)
        uploads: list[listings.ListedUpload] = []
        prefixes: list[str] = []
        for row in rows[:max_uploads]:
            if delimiter and delimiter in row.key[len(prefix):]:
                common = row.key[:len(prefix) + row.key[len(prefix):].index(delimiter) + len(delimiter)]
                if common not in prefixes:
                    prefixes.append(common)
                continue
            uploads.append(listings.ListedUpload(row.key, row.upload_id, _parse_time(row.created_at), row.access_key))
        truncated = len(rows) > max_uploads
        last = rows[max_uploads - 1] if truncated and max_uploads else None
        body = listings.list_multipart_uploads_result(
            bucket=call.bucket, uploads=uploads, prefix=prefix, delimiter=delimiter,
            key_marker=q.get("key-marker", ""), upload_id_marker=q.get("upload-id-marker", ""),
            max_uploads=max_uploads, is_truncated=truncated, next_key_marker=last.key if last else "",
            next_upload_id_marker=last.upload_id if last else "", common_prefixes=prefixes,
            encoding_type=q.get("encoding-type", ""))
        return Response(body, media_type="application/xml")

    async def list_parts(self, call: Call) -> Response:
        upload = await self.upload_for(call)
        if upload.state not in ("open", "staged", "completing"):
            raise S3Error("NoSuchUpload")
        max_parts = _int_param(call.query, "max-parts", 1000, 1000)
        marker = _int_param(call.query, "part-number-marker", 0, 10**6)
        stored = sorted((p for p in (await self.multipart.parts(upload.upload_id)).values()
                         if p.part_number > marker), key=lambda p: p.part_number)
        shown = stored[:max_parts]
        body = listings.list_parts_result(
            bucket=call.bucket, key=upload.key, upload_id=upload.upload_id, owner=upload.access_key,
            parts=[listings.ListedPart(p.part_number, quote_etag(p.etag), p.size, _parse_time(p.updated_at))
                   for p in shown],
            marker=marker, next_marker=shown[-1].part_number if shown else 0, max_parts=max_parts,
            is_truncated=len(stored) > max_parts)
        return Response(body, media_type="application/xml")
