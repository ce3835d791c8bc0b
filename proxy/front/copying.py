"""CopyObject and UploadPartCopy between served buckets.

A copy is an upload whose bytes come from the bucket: the source is read back (bounded, spooled) and
screened like any upload before the server-side copy lands it, pinned to the ETag that was screened so a
source replaced in between is never copied unscreened. The screen consults the verdict cache by SHA-256,
so bytes already known clean run no detector. A part copy needs no screen of its own: Complete screens
the whole staged object. The source is never the quarantine bucket or one of the proxy's internal keys.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from proxy.front.calls import Call, http_date, is_internal, quote_etag, stored_headers, write_conditions
from proxy.front.uploads import MultipartOperations
from proxy.s3 import xml
from proxy.s3.addressing import CopySource, parse_copy_source
from proxy.s3.errors import S3Error
from proxy.screening.upload import Upload
from proxy.storage.spool import BodyTooLarge

#: x-amz-copy-source-if-* headers as (header, botocore parameter of CopyObject/UploadPartCopy).
SOURCE_CONDITIONS = (("x-amz-copy-source-if-match", "CopySourceIfMatch"),
                     ("x-amz-copy-source-if-none-match", "CopySourceIfNoneMatch"),
                     ("x-amz-copy-source-if-modified-since", "CopySourceIfModifiedSince"),
                     ("x-amz-copy-source-if-unmodified-since", "CopySourceIfUnmodifiedSince"))


#: Settings a copy request gives the new object whatever its metadata directive (botocore parameters).
OBJECT_SETTINGS = frozenset({"ACL", "GrantRead", "GrantReadACP", "GrantWriteACP", "GrantFullControl", "StorageClass",
                             "ServerSideEncryption", "WebsiteRedirectLocation", "ChecksumAlgorithm"})
#: Settings that only a metadata directive REPLACE takes from the request (COPY keeps the source's).
METADATA_SETTINGS = frozenset({"CacheControl", "ContentDisposition", "ContentLanguage", "Expires", "ContentEncoding"})


class CopyOperations(MultipartOperations):
    def served_real_bucket(self, client_bucket: str) -> str | None:  # provided by BucketOperations
        raise NotImplementedError

    def _source(self, call: Call) -> tuple[CopySource, str]:
        source = parse_copy_source(call.headers.get("x-amz-copy-source", ""))
        real = self.served_real_bucket(source.bucket)
        if real is None or is_internal(source.key):
            raise S3Error("AccessDenied", "The copy source is not served by this proxy.",
                          resource=f"{source.bucket}/{source.key}")
        return source, real

    @staticmethod
    def _source_conditions(call: Call) -> dict[str, Any]:
        conditions: dict[str, Any] = {}
        for header, parameter in SOURCE_CONDITIONS:
            value = call.headers.get(header)
            if value:
                conditions[parameter] = http_date(value) if "since" in header else value
                if conditions[parameter] is None:
                    conditions.pop(parameter)
        return conditions

    async def copy_object(self, call: Call) -> Response:
        source, real_source = self._source(call)
        directive = call.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.")
        if (real_source, source.key) == (call.real_bucket, call.key) and directive == "COPY" \
                and not source.version_id:
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object "
                          "to itself without changing the object's metadata, storage class, website redirect "
                          "location or encryption attributes.")
        conditions = self._source_conditions(call)
        body = self.new_body()
        try:
            extra = {"VersionId": source.version_id} if source.version_id else {}
            try:
                response = await self.upstream.get_object(
                    real_source, source.key, if_match=conditions.get("CopySourceIfMatch"),
                    if_none_match=conditions.get("CopySourceIfNoneMatch"),
                    if_modified_since=conditions.get("CopySourceIfModifiedSince"),
                    if_unmodified_since=conditions.get("CopySourceIfUnmodifiedSince"), extra=extra)
            except S3Error as error:
                if error.status == 304:  # S3 answers every failed copy-source condition with 412
                    raise S3Error("PreconditionFailed") from error
                raise
            try:
                async for chunk in response.iter_body():
                    await body.write(chunk)
            except BodyTooLarge as exc:
                raise S3Error("EntityTooLarge", extra={
                    "MaxSizeAllowed": str(self.config.limits.max_object_bytes)}) from exc
            source_etag = response.headers.get("etag", "")
            new_type, new_metadata, settings = stored_headers(call)
            params = {name: value for name, value in settings.items() if name in OBJECT_SETTINGS}
            if call.headers.get("x-amz-tagging-directive", "COPY").upper() == "REPLACE":
                params.update(TaggingDirective="REPLACE", Tagging=settings.get("Tagging", ""))
            if directive == "REPLACE":
                content_type, metadata = new_type, new_metadata
                params.update({name: value for name, value in settings.items() if name in METADATA_SETTINGS})
                params.update(Metadata=metadata, MetadataDirective="REPLACE")
                if content_type:
                    params["ContentType"] = content_type
            else:
                content_type = response.headers.get("content-type", "")
                metadata = {k[len("x-amz-meta-"):]: v for k, v in response.headers.items()
                            if k.startswith("x-amz-meta-")}
            upload = Upload(call.bucket, call.real_bucket, call.key or "", call.auth.access_key, content_type, body,
                            metadata)
            verdict = await self.screen_upload(upload)
            if not verdict.lands:
                raise self.refusal(verdict)
        finally:
            body.close()  # the hashes the hooks read stay known
        params.update(write_conditions(call.headers))
        params["CopySourceIfMatch"] = source_etag  # exactly the bytes screened, or 412
        if source.version_id:
            params["CopySourceVersionId"] = source.version_id
        try:
            result = await self.upstream.copy_object(real_source, source.key, call.real_bucket, call.key or "",
                                                     params)
        except BaseException as error:
            await self.write_failed(upload, verdict, error)
            raise
        await self.landed(upload)
        headers = {"x-amz-copy-source-version-id": source.version_id} if source.version_id else {}
        return Response(xml.copy_result("CopyObjectResult", quote_etag(str(result["ETag"])),
                                        result["LastModified"], _checksums(result)),
                        headers=headers, media_type="application/xml")

    async def upload_part_copy(self, call: Call) -> Response:
        part_number = self.part_number(call)
        source, real_source = self._source(call)
        upload = await self.open_upload(call)
        copy_range = call.headers.get("x-amz-copy-source-range", "")
        head = await self.upstream.head_object(real_source, source.key, extra=(
            {"VersionId": source.version_id} if source.version_id else {}))
        size = int(head.headers.get("content-length", "0") or 0)
        if copy_range:
            size = _range_size(copy_range, size)
        already = await self.multipart.total_size(upload.upload_id)
        if already + size > self.config.limits.max_object_bytes:
            raise S3Error("EntityTooLarge")
        params = self._source_conditions(call)
        if copy_range:
            params["CopySourceRange"] = copy_range
        if source.version_id:
            params["CopySourceVersionId"] = source.version_id
        result = await self.upstream.upload_part_copy(real_source, source.key, upload.real_bucket,
                                                      upload.staging_key, upload.upstream_upload_id, part_number,
                                                      params)
        etag = str(result["ETag"])
        await self.multipart.record_part(upload.upload_id, part_number, size, etag, "")
        return Response(xml.copy_result("CopyPartResult", quote_etag(etag), result["LastModified"],
                                        _checksums(result)), media_type="application/xml")


def _checksums(result: dict[str, Any]) -> dict[str, str]:
    """The Checksum* fields of an upstream copy result, passed on as S3 writes them."""
    return {name: str(value) for name, value in result.items()
            if name.startswith("Checksum") and name != "ChecksumType"}


def _range_size(value: str, object_size: int) -> int:
    """The length of `bytes=first-last` within an object, or InvalidArgument as S3 answers."""
    unit, _, span = value.partition("=")
    first, _, last = span.partition("-")
    try:
        start, end = int(first), int(last)
    except ValueError as exc:
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                      "bytes=first-last where first and last are the zero-based offsets of the first and last "
                      "bytes to copy") from exc
    if unit != "bytes" or start < 0 or end < start:
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last "
                      "where first and last are the zero-based offsets of the first and last bytes to copy")
    if end >= object_size:
        raise S3Error("InvalidRange", extra={"RangeRequested": value, "ActualObjectSize": str(object_size)})
    return end - start + 1

