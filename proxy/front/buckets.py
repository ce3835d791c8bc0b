"""Service and bucket operations: the served buckets under the names clients use, never the quarantine bucket.

In a mapped config the proxy answers bucket creation as S3 answers a bucket's owner and never creates or
deletes upstream buckets; in pass-through mode (`[upstream] buckets = "*"`) both are forwarded.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import Response

from proxy.front.calls import INTERNAL_PREFIX, Call, Handlers
from proxy.s3 import listings, xml
from proxy.s3.errors import S3Error


def _location_from_body(body: bytes) -> str:
    if not body.strip():
        return ""
    root = xml.parse_document(body, "CreateBucketConfiguration")
    return (root.findtext(f"{{{xml.NAMESPACE}}}LocationConstraint") or root.findtext("LocationConstraint")
            or "").strip()


def _owner(listed: dict) -> tuple[str, str] | None:
    owner = listed.get("Owner")
    if not owner:
        return None
    return str(owner.get("ID", "")), str(owner.get("DisplayName", owner.get("ID", "")))


class BucketOperations(Handlers):
    def quarantine_bucket(self) -> str:
        quarantine = self.config.quarantine
        return quarantine.bucket if quarantine.store == "s3" else ""

    def served_real_bucket(self, client_bucket: str) -> str | None:
        """The real bucket behind a client's name; None when it is not served (the quarantine bucket never is)."""
        real = self.config.real_bucket(client_bucket)
        hidden = self.quarantine_bucket()
        if hidden and hidden in (real, client_bucket):
            return None
        return real

    async def list_buckets(self, call: Call) -> Response:
        hidden = self.quarantine_bucket()
        mapping = self.config.bucket_map
        try:
            upstream = {b["Name"]: b.get("CreationDate") for b in await self.upstream.list_buckets()}
        except S3Error as error:
            if error.code != "AccessDenied" or not mapping:
                raise
            upstream = {}  # an identity scoped to its buckets may not list them: name the served ones
            for real in set(mapping.values()):
                await self.upstream.head_bucket(real)
                upstream[real] = None
        if mapping:
            names = [(client, upstream[real]) for client, real in mapping.items() if real in upstream]
        else:
            names = list(upstream.items())
        now = datetime.now(UTC)
        listed = sorted((name, created or now) for name, created in names
                        if name != hidden and self.served_real_bucket(name) is not None)
        return Response(xml.list_buckets_result(listed), media_type="application/xml")

    async def create_bucket(self, call: Call) -> Response:
        location = _location_from_body(await self.read_small(call))
        if self.config.passthrough:
            await self.upstream.create_bucket(call.real_bucket, location)
            return Response(status_code=200, headers={"Location": f"/{call.bucket}"})
        if call.bucket not in self.config.bucket_map and self.config.bucket_map:
            raise S3Error("AccessDenied", "Buckets cannot be created through this proxy.", resource=call.bucket)
        await self.upstream.head_bucket(call.real_bucket)
        if self.config.server.region == "us-east-1" and location in ("", "us-east-1"):
            return Response(status_code=200, headers={"Location": f"/{call.bucket}"})
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded "
                      "and you already own it.", resource=call.bucket, extra={"BucketName": call.bucket})

    async def delete_bucket(self, call: Call) -> Response:
        if not self.config.passthrough:
            raise S3Error("AccessDenied", "Buckets cannot be deleted through this proxy.", resource=call.bucket)
        await self.upstream.delete_bucket(call.real_bucket)
        return Response(status_code=204)

    async def head_bucket(self, call: Call) -> Response:
        await self.upstream.head_bucket(call.real_bucket)
        return Response(status_code=200, headers={"x-amz-bucket-region": self.config.server.region})

    async def bucket_location(self, call: Call) -> Response:
        await self.upstream.head_bucket(call.real_bucket)
        return Response(xml.location_constraint(self.config.server.region), media_type="application/xml")

    async def forward_bucket_subresource(self, call: Call) -> Response:
        """GetBucketVersioning, GetBucketAcl: the upstream's answer for the real bucket."""
        params = {name: call.query[name] for name in ("versioning", "acl") if name in call.query}
        answer = await self.upstream.forward("GET", call.real_bucket, None, params, {}, missing="NoSuchBucket")
        return Response(answer.body, status_code=answer.status, media_type="application/xml")

    async def list_object_versions(self, call: Call) -> Response:
        names = ("versions", "prefix", "delimiter", "key-marker", "version-id-marker", "max-keys", "encoding-type")
        params = {name: call.query[name] for name in names if name in call.query}
        answer = await self.upstream.forward("GET", call.real_bucket, None, params, {}, missing="NoSuchBucket")
        body = listings.filter_listing(answer.body, call.bucket, INTERNAL_PREFIX,
                                  url_encoded=call.query.get("encoding-type") == "url")
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
        owners = not v2 or q.get("fetch-owner") == "true"  # v1 always lists owners, v2 when asked
        page = await self.upstream.list_objects_v2(
            call.real_bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
            continuation_token=q.get("continuation-token", "") if v2 else "", start_after=start_after,
            fetch_owner=owners)
        objects = [listings.ListedObject(o["Key"], o["LastModified"], o["ETag"], int(o["Size"]),
                                    o.get("StorageClass") or "STANDARD", _owner(o) if owners else None,
                                    tuple(o.get("ChecksumAlgorithm") or ()) if v2 else ())
                   for o in page.objects if not o["Key"].startswith(INTERNAL_PREFIX)]
        prefixes = [p for p in page.common_prefixes if not p.startswith(INTERNAL_PREFIX)]
        if v2:
            body = listings.list_objects_v2_result(
                bucket=call.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, objects=objects,
                common_prefixes=prefixes, is_truncated=page.is_truncated,
                continuation_token=q.get("continuation-token", ""), next_continuation_token=page.next_token,
                start_after=q.get("start-after", ""), encoding_type=q.get("encoding-type", ""))
        else:
            last = max([o.key for o in objects] + prefixes, default="")
            body = listings.list_objects_v1_result(
                bucket=call.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, objects=objects,
                common_prefixes=prefixes, is_truncated=page.is_truncated, marker=start_after,
                next_marker=last if page.is_truncated else "", encoding_type=q.get("encoding-type", ""))
        return Response(body, media_type="application/xml")
