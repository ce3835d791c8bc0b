"""Object operations: pass-through reads, the screened PutObject, deletes (one or many), and the object
sub-resources (tagging, ACL, attributes) forwarded to the upstream without ever touching the bytes."""

from __future__ import annotations

from starlette.responses import Response

from proxy.front.calls import (
    Call,
    Handlers,
    checksum_echo,
    checksum_parameters,
    http_date,
    is_internal,
    stored_headers,
    write_conditions,
)
from proxy.front.relay import RelayResponse
from proxy.s3 import xml
from proxy.s3.errors import S3Error
from proxy.screening.upload import Upload

#: Response-header overrides a GET may ask for, as botocore parameters.
RESPONSE_OVERRIDES = (("response-content-type", "ResponseContentType"),
                      ("response-content-language", "ResponseContentLanguage"),
                      ("response-expires", "ResponseExpires"), ("response-cache-control", "ResponseCacheControl"),
                      ("response-content-disposition", "ResponseContentDisposition"),
                      ("response-content-encoding", "ResponseContentEncoding"))
#: Request headers a forwarded sub-resource call passes on (the rest are the client's transport).
FORWARDED_HEADERS = ("content-type", "content-md5", "x-amz-acl", "x-amz-grant-full-control", "x-amz-grant-read",
                     "x-amz-grant-read-acp", "x-amz-grant-write", "x-amz-grant-write-acp",
                     "x-amz-object-attributes", "x-amz-max-parts", "x-amz-part-number-marker",
                     "x-amz-expected-bucket-owner", "x-amz-checksum-crc32", "x-amz-checksum-crc32c",
                     "x-amz-checksum-sha1", "x-amz-checksum-sha256", "x-amz-sdk-checksum-algorithm")
#: Answer headers a forwarded call passes back.
ANSWER_HEADERS = ("content-type", "x-amz-version-id", "x-amz-delete-marker", "last-modified")
MAX_DELETE_KEYS = 1000


def _version(call: Call) -> dict[str, object]:
    """VersionId and PartNumber of a read, as botocore parameters."""
    params: dict[str, object] = {"VersionId": call.query["versionId"]} if call.query.get("versionId") else {}
    if "partNumber" in call.query:
        try:
            params["PartNumber"] = int(call.query["partNumber"])
        except ValueError as exc:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000.") from exc
    return params


class ObjectOperations(Handlers):
    async def get_object(self, call: Call) -> Response:
        h = call.headers
        extra = _version(call)
        extra.update({p: call.query[q] for q, p in RESPONSE_OVERRIDES if call.query.get(q)})
        response = await self.upstream.get_object(
            call.real_bucket, call.key or "", range=h.get("range"), if_match=h.get("if-match"),
            if_none_match=h.get("if-none-match"), if_modified_since=http_date(h.get("if-modified-since")),
            if_unmodified_since=http_date(h.get("if-unmodified-since")), extra=extra)
        size = int(response.headers.get("content-length", "0") or 0)
        self.metrics.bytes_out.inc(size)
        return RelayResponse(response.iter_body(), status_code=response.status, headers=response.headers,
                             close=response.close)

    async def head_object(self, call: Call) -> Response:
        h = call.headers
        response = await self.upstream.head_object(
            call.real_bucket, call.key or "", if_match=h.get("if-match"), if_none_match=h.get("if-none-match"),
            if_modified_since=http_date(h.get("if-modified-since")),
            if_unmodified_since=http_date(h.get("if-unmodified-since")),
            extra={**_version(call), **({"Range": h["range"]} if h.get("range") else {})})
        return Response(status_code=response.status, headers=response.headers)

    async def put_object(self, call: Call) -> Response:
        body = await self.read(call, self.config.limits.max_object_bytes)
        try:
            key = call.key or ""
            content_type, metadata, extra = stored_headers(call)
            extra.update(write_conditions(call.headers))
            checksum = await checksum_echo(call, body)
            extra.update(checksum_parameters(checksum))
            # Every body is screened, empty ones too (pict-rs's `health-check`): the screen's EmptyObject step
            # lets zero bytes land whatever the policy says of non-media.
            upload = Upload(call.bucket, call.real_bucket, key, call.auth.access_key, content_type, body, metadata)
            verdict = await self.screen_upload(upload)
            if not verdict.lands:
                raise self.refusal(verdict)
            try:
                written = await self.upstream.put_object(call.real_bucket, key, body, content_type=content_type,
                                                         metadata=metadata, extra=extra)
            except BaseException as error:
                await self.write_failed(upload, verdict, error)
                raise
            await self.landed(upload)
            headers = {**written.headers, "ETag": written.etag, **checksum}
        finally:
            body.close()
        return Response(status_code=200, headers=headers)

    async def delete_object(self, call: Call) -> Response:
        headers = await self.upstream.delete_object(call.real_bucket, call.key or "",
                                                    call.query.get("versionId", ""))
        return Response(status_code=204, headers=headers)

    async def delete_objects(self, call: Call) -> Response:
        if "content-md5" not in call.headers and not any(h.startswith("x-amz-checksum-") for h in call.headers):
            raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5")
        objects, quiet = xml.parse_delete(await self.read_small(call), MAX_DELETE_KEYS)
        refused = [o for o in objects if is_internal(o["Key"])]
        allowed = [o for o in objects if not is_internal(o["Key"])]
        answer = await self.upstream.delete_objects(call.real_bucket, allowed, quiet) if allowed else {}
        errors = list(answer.get("Errors", []))
        errors.extend({"Key": o["Key"], "Code": "AccessDenied", "Message": "This key is reserved by the proxy."}
                      for o in refused)
        return Response(xml.delete_result(answer.get("Deleted", []) if not quiet else [], errors),
                        media_type="application/xml")

    async def forward_subresource(self, call: Call) -> Response:
        """Tagging, ACL and attributes: the upstream's own answer, for the real bucket; bytes never touched."""
        method = call.request.method
        body = await self.read_small(call) if method in ("PUT", "POST") else b""
        params = {name: call.query[name] for name in ("acl", "tagging", "attributes", "versionId")
                  if name in call.query}
        headers = {name: call.headers[name] for name in FORWARDED_HEADERS if name in call.headers}
        answer = await self.upstream.forward(method, call.real_bucket, call.key, params, headers, body)
        passed = {k: v for k, v in answer.headers.items() if k.lower() in ANSWER_HEADERS}
        return Response(answer.body, status_code=answer.status, headers=passed)
