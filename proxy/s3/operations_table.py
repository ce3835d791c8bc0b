"""Which S3 operation a request is: an explicit table of (method, level, sub-resources, header) -> operation.

S3 decides the operation from the method, whether the request names a bucket and a key, and the query's
sub-resources (`?acl`, `?tagging`, `?uploads`, ...). A sub-resource this table does not know, or a
combination it does not list, is :class:`S3Error` NotImplemented (501): it never falls through to an
object read or write (a `PUT ?acl` must never overwrite the object with the ACL document).

Query parameters that only shape a listing or a response (`prefix`, `max-keys`, `response-content-type`,
the presigned `X-Amz-*` ones, the SDKs' `x-id`) are not sub-resources and do not take part in dispatch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from proxy.s3.errors import S3Error

#: Parameters that never change which operation a request is.
PLAIN_PARAMETERS = frozenset({
    "prefix", "delimiter", "marker", "max-keys", "list-type", "continuation-token", "start-after", "fetch-owner",
    "encoding-type", "key-marker", "upload-id-marker", "max-uploads", "version-id-marker", "max-parts",
    "part-number-marker", "x-id", "allow-unordered", "optional-object-attributes",
    "response-content-type", "response-content-language", "response-expires", "response-cache-control",
    "response-content-disposition", "response-content-encoding",
    "AWSAccessKeyId", "Expires", "Signature",  # a SigV2 presigned URL's own
})


def _plain(name: str) -> bool:
    return name in PLAIN_PARAMETERS or name.lower().startswith("x-amz-")


@dataclass(frozen=True)
class Route:
    """One row: `subresources` must all be present; `optional` ones may be; `header` must be sent."""

    method: str
    level: str  # "service", "bucket" or "object"
    subresources: frozenset[str]
    operation: str
    header: str = ""
    optional: frozenset[str] = frozenset()


def _r(method: str, level: str, subs: str, operation: str, header: str = "", optional: str = "") -> Route:
    return Route(method, level, frozenset(subs.split()), operation, header, frozenset(optional.split()))


#: The table. Rows with a header condition come before the same row without one.
ROUTES: tuple[Route, ...] = (
    _r("GET", "service", "", "ListBuckets"),
    _r("GET", "bucket", "", "ListObjects"),
    _r("HEAD", "bucket", "", "HeadBucket"),
    _r("PUT", "bucket", "", "CreateBucket"),
    _r("DELETE", "bucket", "", "DeleteBucket"),
    _r("GET", "bucket", "location", "GetBucketLocation"),
    _r("GET", "bucket", "versioning", "GetBucketVersioning"),
    _r("GET", "bucket", "acl", "GetBucketAcl"),
    _r("GET", "bucket", "versions", "ListObjectVersions"),
    _r("GET", "bucket", "uploads", "ListMultipartUploads"),
    _r("POST", "bucket", "delete", "DeleteObjects"),
    _r("GET", "object", "", "GetObject", optional="versionId partNumber"),
    _r("HEAD", "object", "", "HeadObject", optional="versionId partNumber"),
    _r("PUT", "object", "", "CopyObject", header="x-amz-copy-source"),
    _r("PUT", "object", "", "PutObject"),
    _r("DELETE", "object", "", "DeleteObject", optional="versionId"),
    _r("POST", "object", "uploads", "CreateMultipartUpload"),
    _r("PUT", "object", "partNumber uploadId", "UploadPartCopy", header="x-amz-copy-source"),
    _r("PUT", "object", "partNumber uploadId", "UploadPart"),
    _r("POST", "object", "uploadId", "CompleteMultipartUpload"),
    _r("DELETE", "object", "uploadId", "AbortMultipartUpload"),
    _r("GET", "object", "uploadId", "ListParts"),
    _r("GET", "object", "acl", "GetObjectAcl", optional="versionId"),
    _r("PUT", "object", "acl", "PutObjectAcl", optional="versionId"),
    _r("GET", "object", "tagging", "GetObjectTagging", optional="versionId"),
    _r("PUT", "object", "tagging", "PutObjectTagging", optional="versionId"),
    _r("DELETE", "object", "tagging", "DeleteObjectTagging", optional="versionId"),
    _r("GET", "object", "attributes", "GetObjectAttributes", optional="versionId"),
)


def subresources(query: Collection[str]) -> frozenset[str]:
    """The query's names that select an operation (everything but the plain parameters)."""
    return frozenset(name for name in query if not _plain(name))


def level_of(bucket: str | None, key: str | None) -> str:
    if bucket is None:
        return "service"
    return "bucket" if key is None else "object"


def operation_for(method: str, bucket: str | None, key: str | None, query: Collection[str],
                  headers: Mapping[str, str]) -> str:
    """The S3 operation of a request, or NotImplemented (501) when the table has no row for it."""
    level = level_of(bucket, key)
    subs = subresources(query)
    for route in ROUTES:
        if route.method != method or route.level != level:
            continue
        if not route.subresources <= subs or not (subs - route.subresources) <= route.optional:
            continue
        if route.header and route.header not in headers:
            continue
        return route.operation
    named = ", ".join(sorted(subs)) or "none"
    raise S3Error("NotImplemented", f"{method} on a {level} with sub-resources ({named}) is not implemented "
                  "by this proxy.")


def describe(method: str, bucket: str | None, key: str | None, query: Collection[str]) -> str:
    """A label for logs and metrics that never raises (the request may not dispatch)."""
    try:
        return operation_for(method, bucket, key, query, {})
    except S3Error:
        return f"{method}{level_of(bucket, key).capitalize()}Unknown"
