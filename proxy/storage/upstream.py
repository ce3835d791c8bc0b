"""The real storage behind the proxy: one aiobotocore client, re-signing every request with upstream credentials.

Object reads (GET, HEAD) and forwarded sub-resources go as signed requests on one kept aiohttp session
(:mod:`proxy.storage.forward`, :mod:`proxy.storage.reads`): botocore's per-operation cost was most of the proxy's
CPU on a GET. Reads are streamed (an async iterator over the body, never the whole object); upstream failures
come back as :class:`~proxy.s3.errors.S3Error` with the upstream's own code, so the gateway answers as S3 would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
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
from proxy.storage.forward import RawResponse, SignedSession, error_fields, read_bounded
from proxy.storage.reads import ObjectResponse, pick_headers, read_request
from proxy.storage.spool import SpooledBody

#: Upstream answers that mean the proxy's OWN credentials or clock are wrong: never the client's fault.
OWN_CREDENTIAL_ERRORS = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "AuthorizationHeaderMalformed", "RequestTimeTooSkewed", "InvalidSecurity"})

_STATUS_CODES = {304: "NotModified", 400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey",
                 412: "PreconditionFailed", 416: "InvalidRange", 500: "InternalError", 503: "SlowDown"}


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
    _signed: SignedSession | None = field(default=None, init=False)

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
        self._signed = SignedSession(credentials=self._credentials, region=self.config.region, limits=self.limits,
                                     verify_tls=self.config.verify_tls, pool_size=self.config.max_pool_connections)

    async def close(self) -> None:
        if self._signed is not None:
            await self._signed.close()
            self._signed = None
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
        error = exc.response.get("Error", {})
        return self._answer_error(int(meta.get("HTTPStatusCode") or 500), str(error.get("Code") or ""),
                                  str(error.get("Message") or ""), meta.get("HTTPHeaders", {}), missing)

    def _answer_error(self, status: int, code: str, message: str, raw: Mapping[str, str], missing: str) -> S3Error:
        """An upstream error answer as the S3Error the client gets (a bodiless one named by its status)."""
        if not code or code.isdigit():
            code = missing if status == 404 else _STATUS_CODES.get(status, "InternalError")
        if code in OWN_CREDENTIAL_ERRORS:
            return self._refused_us(code)
        if status >= 500 and self.on_error:
            self.on_error(code)
        headers = {}
        if status == 304:
            headers = {k: raw[k] for k in ("etag", "last-modified") if k in raw}
        return S3Error(code, message, status=status, headers=headers)

    def _refused_us(self, code: str) -> S3Error:
        """The upstream refused the proxy's own credentials: a server fault (503), named as the upstream's."""
        if self.on_error:
            self.on_error(code)
        return S3Error("ServiceUnavailable", f"The storage behind this proxy ({self.config.endpoint}) refused "
                       f"the proxy's own credentials ({code}); the operator must fix [upstream].")

    async def _read(self, method: str, bucket: str, key: str, params: dict[str, Any],
                    operation: str) -> ObjectResponse:
        """GET or HEAD as one signed request on the kept session (see proxy.storage.reads)."""
        assert self._signed is not None, "Upstream.start() first"
        query, headers = read_request(params)
        try:
            response = await self._signed.open(method, self._url(bucket, key), query, headers)
        except (aiohttp.ClientError, BotoCoreError, OSError, TimeoutError) as exc:  # BotoCoreError: no credentials
            if self.on_error:
                self.on_error(operation)
            raise S3Error("ServiceUnavailable", f"The storage behind this proxy did not answer: "
                          f"{type(exc).__name__}") from exc
        if response.status < 300:
            return ObjectResponse(response.status, pick_headers(response.headers), response)
        try:
            body = await read_bounded(response) if method == "GET" else b""
        except (aiohttp.ClientError, OSError, TimeoutError):
            body = b""
        finally:
            response.release()
        code, message = error_fields(body)
        raw = {name.lower(): value for name, value in response.headers.items()}
        raise self._answer_error(response.status, code, message, raw, "NoSuchKey")

    async def get_object(self, bucket: str, key: str, *, range: str | None = None, if_match: str | None = None,
                         if_none_match: str | None = None, if_modified_since: datetime | None = None,
                         if_unmodified_since: datetime | None = None,
                         extra: Mapping[str, Any] | None = None) -> ObjectResponse:
        """`extra`: VersionId, PartNumber and the Response* overrides (botocore's names), passed as they are."""
        params = {"Range": range, "IfMatch": if_match, "IfNoneMatch": if_none_match,
                  "IfModifiedSince": if_modified_since, "IfUnmodifiedSince": if_unmodified_since, **(extra or {})}
        return await self._read("GET", bucket, key, params, "get_object")

    async def head_object(self, bucket: str, key: str, *, if_match: str | None = None,
                          if_none_match: str | None = None, if_modified_since: datetime | None = None,
                          if_unmodified_since: datetime | None = None,
                          extra: Mapping[str, Any] | None = None) -> ObjectResponse:
        params = {"IfMatch": if_match, "IfNoneMatch": if_none_match, "IfModifiedSince": if_modified_since,
                  "IfUnmodifiedSince": if_unmodified_since, **(extra or {})}
        response = await self._read("HEAD", bucket, key, params, "head_object")
        await response.close()
        return response

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

    async def list_object_versions(self, bucket: str, *, prefix: str = "", key_marker: str = "",
                                   version_id_marker: str = "") -> dict[str, Any]:
        """One page of ListObjectVersions (botocore's answer: Versions, DeleteMarkers, IsTruncated, Next*Marker)."""
        markers = {"KeyMarker": key_marker, "VersionIdMarker": version_id_marker} if key_marker else {}
        return await self._call("list_object_versions", missing="NoSuchBucket", Bucket=bucket, Prefix=prefix,
                                **markers)

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
        assert self._signed is not None, "Upstream.start() first"
        try:
            answer = await self._signed.send(method, self._url(bucket, key), params, headers, body)
        except (aiohttp.ClientError, BotoCoreError, OSError, TimeoutError) as exc:
            if self.on_error:
                self.on_error(method)
            raise S3Error("ServiceUnavailable", f"The storage behind this proxy did not answer: "
                          f"{type(exc).__name__}") from exc
        if answer.status < 300:
            return answer
        code, message = error_fields(answer.body)
        raise self._answer_error(answer.status, code, message, {}, missing)

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
