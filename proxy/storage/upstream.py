"""The real storage behind the proxy: one aiobotocore client, re-signing every request with upstream credentials.

Reads are streamed (an async iterator over the body, never the whole object); upstream failures come back
as :class:`~proxy.s3.errors.S3Error` with the upstream's own code, so the gateway answers as S3 would.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import validate_ascii_metadata

from proxy.config import LimitsConfig, UpstreamConfig
from proxy.s3.errors import S3Error
from proxy.storage.forward import RawResponse, error_fields, send_signed
from proxy.storage.spool import SpooledBody

#: Response headers passed from the upstream to the client on GET and HEAD.
PASSED_HEADERS = (
    "content-length", "content-type", "etag", "last-modified", "content-range", "accept-ranges",
    "cache-control", "content-disposition", "content-encoding", "content-language", "expires",
    "x-amz-version-id", "x-amz-storage-class", "x-amz-mp-parts-count", "x-amz-tagging-count",
    "x-amz-delete-marker", "x-amz-website-redirect-location", "x-amz-server-side-encryption",
)
STREAM_CHUNK_BYTES = 256 * 1024

#: Upstream answers that mean the proxy's OWN credentials or clock are wrong: never the client's fault.
OWN_CREDENTIAL_ERRORS = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "AuthorizationHeaderMalformed", "RequestTimeTooSkewed", "InvalidSecurity"})

_STATUS_CODES = {304: "NotModified", 400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey",
                 412: "PreconditionFailed", 416: "InvalidRange", 500: "InternalError", 503: "SlowDown"}


def _wire(value: str) -> str:
    """A header value as the upstream's bytes, in the latin-1 form an ASGI response writes byte for byte
    (aiohttp decodes header bytes as UTF-8; metadata may be UTF-8)."""
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def _pick_headers(raw: Mapping[str, str]) -> dict[str, str]:
    headers = {name: _wire(raw[name]) for name in PASSED_HEADERS if name in raw}
    headers.update({name: _wire(value) for name, value in raw.items() if name.startswith("x-amz-meta-")})
    return headers


@dataclass
class ObjectResponse:
    """A GET or HEAD answer: status, the headers clients rely on, and (for GET) a streamed body."""

    status: int
    headers: dict[str, str]
    _body: Any = None

    async def iter_body(self, chunk_size: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        if self._body is None:
            return
        try:
            async for chunk in self._body.iter_chunks(chunk_size):
                yield chunk
        except (aiohttp.ClientError, BotoCoreError, OSError, TimeoutError) as exc:  # the upstream broke off mid-body
            raise S3Error("ServiceUnavailable", f"The storage behind this proxy broke off: {type(exc).__name__}") \
                from exc
        finally:
            await self.close()

    async def close(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()


#: Headers of an upstream write answer that S3 clients get back (the checksum is echoed by the front itself).
WRITE_ANSWER_HEADERS = ("x-amz-version-id", "x-amz-server-side-encryption",
                        "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-expiration")


@dataclass(frozen=True)
class Written:
    """An upstream write's answer: the ETag, and the headers passed back to the client."""

    etag: str
    headers: dict[str, str]


@dataclass(frozen=True)
class ListedPage:
    objects: list[dict[str, Any]]
    common_prefixes: list[str]
    is_truncated: bool
    next_token: str
    key_count: int


@dataclass
class Upstream:
    config: UpstreamConfig
    limits: LimitsConfig
    on_error: Callable[[str], None] | None = None
    _client: Any = field(default=None, init=False)
    _stack: contextlib.AsyncExitStack | None = field(default=None, init=False)

    async def start(self) -> None:
        session = get_session()
        config = AioConfig(
            region_name=self.config.region,
            signature_version="s3v4",
            s3={"addressing_style": self.config.addressing, "payload_signing_enabled": False},
            max_pool_connections=self.config.max_pool_connections,
            connect_timeout=self.limits.upstream_connect_timeout_s,
            read_timeout=self.limits.upstream_read_timeout_s,
            retries={"total_max_attempts": 2, "mode": "standard"},  # one retry: the client retries too
            parameter_validation=False,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._stack = contextlib.AsyncExitStack()
        self._client = await self._stack.enter_async_context(session.create_client(
            "s3",
            endpoint_url=self.config.endpoint,
            aws_access_key_id=self.config.access_key or None,
            aws_secret_access_key=self.config.secret_key or None,
            aws_session_token=self.config.session_token or None,
            verify=self.config.verify_tls,
            config=config,
        ))
        # Metadata values are passed on exactly as the client signed them (UTF-8 included); botocore would
        # refuse non-ASCII ones before sending.
        for event in ("before-parameter-build.s3.PutObject", "before-parameter-build.s3.CopyObject",
                      "before-parameter-build.s3.CreateMultipartUpload"):
            self._client.meta.events.unregister(event, validate_ascii_metadata)

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            self._client = None

    async def _call(self, operation: str, missing: str = "NoSuchKey", **params: Any) -> dict[str, Any]:
        try:
            return await getattr(self._client, operation)(**params)
        except ClientError as exc:
            raise self._map_client_error(exc, missing) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            if self.on_error:
                self.on_error(operation)
            raise S3Error("ServiceUnavailable", f"The storage behind this proxy did not answer: "
                          f"{type(exc).__name__}") from exc

    def _map_client_error(self, exc: ClientError, missing: str) -> S3Error:
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 500)
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        if not code or code.isdigit():
            code = missing if status == 404 else _STATUS_CODES.get(status, "InternalError")
        if code in OWN_CREDENTIAL_ERRORS:
            return self._refused_us(code)
        if status >= 500 and self.on_error:
            self.on_error(code)
        headers = {}
        raw = meta.get("HTTPHeaders", {})
        if status == 304:
            headers = {k: raw[k] for k in ("etag", "last-modified") if k in raw}
        return S3Error(code, str(error.get("Message") or ""), status=status, headers=headers)

    def _refused_us(self, code: str) -> S3Error:
        """The upstream refused the proxy's own credentials: a server fault (503), named as the upstream's."""
        if self.on_error:
            self.on_error(code)
        return S3Error("ServiceUnavailable", f"The storage behind this proxy ({self.config.endpoint}) refused "
                       f"the proxy's own credentials ({code}); the operator must fix [upstream].")

    @staticmethod
    def _conditions(range_: str | None, if_match: str | None, if_none_match: str | None,
                    if_modified_since: datetime | None, if_unmodified_since: datetime | None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if range_:
            params["Range"] = range_
        if if_match:
            params["IfMatch"] = if_match
        if if_none_match:
            params["IfNoneMatch"] = if_none_match
        if if_modified_since:
            params["IfModifiedSince"] = if_modified_since
        if if_unmodified_since:
            params["IfUnmodifiedSince"] = if_unmodified_since
        return params

    async def get_object(self, bucket: str, key: str, *, range: str | None = None, if_match: str | None = None,
                         if_none_match: str | None = None, if_modified_since: datetime | None = None,
                         if_unmodified_since: datetime | None = None,
                         extra: Mapping[str, str] | None = None) -> ObjectResponse:
        """`extra`: VersionId and the Response* overrides, passed as they are."""
        params = self._conditions(range, if_match, if_none_match, if_modified_since, if_unmodified_since)
        params.update(extra or {})
        response = await self._call("get_object", Bucket=bucket, Key=key, **params)
        meta = response["ResponseMetadata"]
        return ObjectResponse(int(meta["HTTPStatusCode"]), _pick_headers(meta["HTTPHeaders"]), response["Body"])

    async def head_object(self, bucket: str, key: str, *, if_match: str | None = None,
                          if_none_match: str | None = None, if_modified_since: datetime | None = None,
                          if_unmodified_since: datetime | None = None,
                          extra: Mapping[str, str] | None = None) -> ObjectResponse:
        params = self._conditions(None, if_match, if_none_match, if_modified_since, if_unmodified_since)
        params.update(extra or {})
        response = await self._call("head_object", Bucket=bucket, Key=key, **params)
        meta = response["ResponseMetadata"]
        return ObjectResponse(int(meta["HTTPStatusCode"]), _pick_headers(meta["HTTPHeaders"]))

    async def read_object(self, bucket: str, key: str, body: SpooledBody) -> dict[str, str]:
        """Stream a whole object into a SpooledBody (bounded memory); returns its headers."""
        response = await self.get_object(bucket, key)
        async for chunk in response.iter_body():
            await body.write(chunk)
        return response.headers

    async def put_object(self, bucket: str, key: str, body: SpooledBody, *, content_type: str = "",
                         metadata: Mapping[str, str] | None = None,
                         extra: Mapping[str, Any] | None = None) -> Written:
        """Write one object; `extra` may carry IfMatch/IfNoneMatch, which the upstream itself enforces."""
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body.reader(),
                                  "ContentLength": body.size, "ContentMD5": body.md5_base64,
                                  "Metadata": dict(metadata or {})}
        if content_type:
            params["ContentType"] = content_type
        params.update(extra or {})
        response = await self._call("put_object", **params)
        raw = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return Written(str(response["ETag"]), {name: raw[name] for name in WRITE_ANSWER_HEADERS if name in raw})

    async def delete_object(self, bucket: str, key: str, version_id: str = "") -> dict[str, str]:
        params = {"VersionId": version_id} if version_id else {}
        response = await self._call("delete_object", Bucket=bucket, Key=key, **params)
        raw = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return {k: raw[k] for k in ("x-amz-version-id", "x-amz-delete-marker") if k in raw}

    async def head_bucket(self, bucket: str) -> None:
        await self._call("head_bucket", missing="NoSuchBucket", Bucket=bucket)

    async def list_objects_v2(self, bucket: str, *, prefix: str = "", delimiter: str = "", max_keys: int = 1000,
                              continuation_token: str = "", start_after: str = "",
                              fetch_owner: bool = False) -> ListedPage:
        # botocore asks for url encoding itself and decodes the keys (safe for any key bytes in XML).
        params: dict[str, Any] = {"Bucket": bucket, "MaxKeys": max_keys}
        if fetch_owner:
            params["FetchOwner"] = True
        if prefix:
            params["Prefix"] = prefix
        if delimiter:
            params["Delimiter"] = delimiter
        if continuation_token:
            params["ContinuationToken"] = continuation_token
        if start_after:
            params["StartAfter"] = start_after
        response = await self._call("list_objects_v2", missing="NoSuchBucket", **params)
        return ListedPage(
            objects=list(response.get("Contents", [])),
            common_prefixes=[p["Prefix"] for p in response.get("CommonPrefixes", [])],
            is_truncated=bool(response.get("IsTruncated")),
            next_token=str(response.get("NextContinuationToken") or ""),
            key_count=int(response.get("KeyCount") or 0),
        )

    async def create_multipart_upload(self, bucket: str, key: str, *, content_type: str = "",
                                      metadata: Mapping[str, str] | None = None,
                                      extra: Mapping[str, str] | None = None) -> str:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Metadata": dict(metadata or {})}
        if content_type:
            params["ContentType"] = content_type
        params.update(extra or {})
        response = await self._call("create_multipart_upload", **params)
        return str(response["UploadId"])

    async def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, body: SpooledBody,
                          extra: Mapping[str, Any] | None = None) -> str:
        response = await self._call("upload_part", missing="NoSuchUpload", Bucket=bucket, Key=key,
                                    UploadId=upload_id, PartNumber=part_number, Body=body.reader(),
                                    ContentLength=body.size, ContentMD5=body.md5_base64, **dict(extra or {}))
        return str(response["ETag"])

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]], extra: Mapping[str, Any] | None = None) -> str:
        response = await self._call(
            "complete_multipart_upload", missing="NoSuchUpload", Bucket=bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]}, **dict(extra or {}))
        return str(response.get("ETag") or "")  # some servers (Ceph RGW) may leave it out

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self._call("abort_multipart_upload", missing="NoSuchUpload", Bucket=bucket, Key=key,
                         UploadId=upload_id)

    async def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                          extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Server-side copy (objects up to 5 GiB); by default keeping metadata and content type.

        `extra` carries CopySourceVersionId, the CopySourceIf* conditions, MetadataDirective with the new
        metadata, and IfMatch/IfNoneMatch on the destination. Returns the CopyObjectResult (ETag, LastModified).
        """
        source: dict[str, str] = {"Bucket": src_bucket, "Key": src_key}
        params = dict(extra or {})
        if "CopySourceVersionId" in params:
            source["VersionId"] = params.pop("CopySourceVersionId")
        params.setdefault("MetadataDirective", "COPY")
        response = await self._call("copy_object", Bucket=dst_bucket, Key=dst_key, CopySource=source, **params)
        return dict(response["CopyObjectResult"])

    async def upload_part_copy(self, src_bucket: str, src_key: str, bucket: str, key: str, upload_id: str,
                               part_number: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Copy (a range of) an object into a part; `extra` carries CopySourceRange and the conditions."""
        source: dict[str, str] = {"Bucket": src_bucket, "Key": src_key}
        params = dict(extra or {})
        if "CopySourceVersionId" in params:
            source["VersionId"] = params.pop("CopySourceVersionId")
        response = await self._call("upload_part_copy", missing="NoSuchUpload", Bucket=bucket, Key=key,
                                    UploadId=upload_id, PartNumber=part_number, CopySource=source, **params)
        return dict(response["CopyPartResult"])

    # ---- forwarded sub-resources (answered exactly as the upstream answers) ----------------------------

    def _url(self, bucket: str, key: str | None) -> str:
        base = self.config.endpoint.rstrip("/")
        path = "/" + quote(key, safe="/~") if key is not None else ""
        if self.config.addressing == "virtual":
            scheme, _, host = base.partition("://")
            return f"{scheme}://{bucket}.{host}{path or '/'}"
        return f"{base}/{quote(bucket, safe='')}{path}"

    async def _credentials(self) -> Any:
        credentials = self._client._request_signer._credentials  # the client's own (static or refreshed) ones
        frozen = getattr(credentials, "get_frozen_credentials", None)
        return await frozen() if frozen is not None else credentials

    async def forward(self, method: str, bucket: str, key: str | None, params: Mapping[str, str],
                      headers: Mapping[str, str], body: bytes = b"", missing: str = "NoSuchKey") -> RawResponse:
        """Send one small request (ACL, tagging, attributes, listings) re-signed with the upstream's credentials.

        The answer's body is bounded; an error answer becomes S3Error (the proxy's own credentials refused: 503).
        """
        try:
            answer = await send_signed(method, self._url(bucket, key), params, headers, body,
                                       credentials=await self._credentials(), region=self.config.region,
                                       limits=self.limits, verify_tls=self.config.verify_tls)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if self.on_error:
                self.on_error(method)
            raise S3Error("ServiceUnavailable", f"The storage behind this proxy did not answer: "
                          f"{type(exc).__name__}") from exc
        if answer.status < 300:
            return answer
        code, message = error_fields(answer.body)
        if not code:
            code = missing if answer.status == 404 else _STATUS_CODES.get(answer.status, "InternalError")
        if code in OWN_CREDENTIAL_ERRORS:
            raise self._refused_us(code)
        if answer.status >= 500 and self.on_error:
            self.on_error(code)
        raise S3Error(code, message, status=answer.status)

    # ---- buckets -------------------------------------------------------------------------------------------

    async def list_buckets(self) -> list[dict[str, Any]]:
        response = await self._call("list_buckets")
        return list(response.get("Buckets", []))

    async def create_bucket(self, bucket: str, location: str = "") -> None:
        params: dict[str, Any] = {"Bucket": bucket}
        if location:
            params["CreateBucketConfiguration"] = {"LocationConstraint": location}
        await self._call("create_bucket", **params)

    async def delete_bucket(self, bucket: str) -> None:
        await self._call("delete_bucket", missing="NoSuchBucket", Bucket=bucket)

    async def delete_objects(self, bucket: str, objects: list[dict[str, str]], quiet: bool) -> dict[str, Any]:
        return await self._call("delete_objects", missing="NoSuchBucket", Bucket=bucket,
                                Delete={"Objects": objects, "Quiet": quiet})

    async def list_multipart_uploads(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        """The first page (up to 1,000) of the upstream's own unfinished multipart uploads under `prefix`."""
        response = await self._call("list_multipart_uploads", missing="NoSuchBucket", Bucket=bucket, Prefix=prefix)
        return list(response.get("Uploads", []))

    async def ready(self, buckets: list[str]) -> None:
        """Prove the upstream answers and the credentials work (for /readyz)."""
        if buckets:
            for bucket in buckets:
                await self.head_bucket(bucket)
        else:
            await self._call("list_buckets")
