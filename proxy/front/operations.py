"""The S3 operations the proxy serves, one group per module, and the table from operation name to handler.

Groups: :mod:`objects` (reads, the screened PutObject, deletes, object sub-resources), :mod:`buckets`
(service and bucket operations), :mod:`uploads` (multipart), :mod:`copying` (CopyObject, UploadPartCopy).
The operation itself is decided by :func:`proxy.s3.operations_table.operation_for`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import Response

from proxy.front.buckets import BucketOperations
from proxy.front.calls import INTERNAL_PREFIX, Call
from proxy.front.copying import CopyOperations
from proxy.front.objects import ObjectOperations

__all__ = ["HANDLERS", "INTERNAL_PREFIX", "Call", "Operations"]

#: Operation name (as the table names it) -> handler method name.
HANDLERS: dict[str, str] = {
    "ListBuckets": "list_buckets",
    "CreateBucket": "create_bucket",
    "DeleteBucket": "delete_bucket",
    "HeadBucket": "head_bucket",
    "GetBucketLocation": "bucket_location",
    "GetBucketVersioning": "forward_bucket_subresource",
    "GetBucketAcl": "forward_bucket_subresource",
    "ListObjects": "list_objects",
    "ListObjectVersions": "list_object_versions",
    "ListMultipartUploads": "list_multipart_uploads",
    "DeleteObjects": "delete_objects",
    "GetObject": "get_object",
    "HeadObject": "head_object",
    "PutObject": "put_object",
    "CopyObject": "copy_object",
    "DeleteObject": "delete_object",
    "CreateMultipartUpload": "create_multipart_upload",
    "UploadPart": "upload_part",
    "UploadPartCopy": "upload_part_copy",
    "CompleteMultipartUpload": "complete_multipart_upload",
    "AbortMultipartUpload": "abort_multipart_upload",
    "ListParts": "list_parts",
    "GetObjectAcl": "forward_subresource",
    "PutObjectAcl": "forward_subresource",
    "GetObjectTagging": "forward_subresource",
    "PutObjectTagging": "forward_subresource",
    "DeleteObjectTagging": "forward_subresource",
    "GetObjectAttributes": "forward_subresource",
}


class Operations(BucketOperations, ObjectOperations, CopyOperations):
    """Every operation group over one shared state (config, upstream, multipart state, screen, metrics)."""

    def handler(self, operation: str) -> Callable[[Call], Awaitable[Response]]:
        return getattr(self, HANDLERS[operation])
