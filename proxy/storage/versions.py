"""Every version of a key: deleting the proxy's own objects (multipart staging, quarantine bytes) for good.

On a versioned bucket a plain DELETE only hides an object behind a delete marker: the bytes stay readable by
version id. Unscreened staging bytes and purged quarantine bytes must not linger like that, so the proxy
deletes its own objects version by version (delete markers included). On an unversioned bucket the plain
DELETE answers without a version id and nothing more is sent.

Works on the upstream (:class:`~proxy.storage.upstream.Upstream`, whose errors are S3Error) and on a bare
aiobotocore S3 client (the quarantine store; its errors stay botocore's), so both share this one way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from proxy.s3.errors import S3Error
from proxy.storage.upstream import Upstream

log = logging.getLogger("bucketguard.storage")

#: One page of ListObjectVersions: list_page(bucket, prefix, key_marker, version_id_marker) -> botocore's answer.
ListPage = Callable[[str, str, str, str], Awaitable[dict[str, Any]]]
#: DeleteObject, of one version when version_id is set: delete(bucket, key, version_id) -> the answer's
#: x-amz-version-id / x-amz-delete-marker headers (where the upstream sent them).
Delete = Callable[[str, str, str], Awaitable[Mapping[str, str]]]

#: The version id S3 gives objects written while a bucket was never (or not) versioned.
NULL_VERSION = "null"
#: Answers meaning this identity or server will not list or delete versions (no s3:ListBucketVersions or
#: s3:DeleteObjectVersion, or no versioning support).
REFUSED = frozenset({"AccessDenied", "NotImplemented", "MethodNotAllowed"})


def refused(exc: BaseException) -> bool:
    """Whether an S3 failure (the upstream's S3Error or botocore's ClientError) is a refusal of the operation."""
    if isinstance(exc, S3Error):
        return exc.code in REFUSED
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) in REFUSED
    return False


@dataclass(frozen=True)
class Version:
    """One stored version of a key, or a delete marker. `version_id` "" means: no versions known (plain delete)."""

    key: str
    version_id: str
    last_modified: datetime
    delete_marker: bool = False


def _operations(s3: Upstream | Any) -> tuple[ListPage, Delete]:
    """The two operations this module needs, on the upstream (its own error mapping, S3Error, and failure
    accounting) or on a bare aiobotocore client (botocore's errors)."""
    if isinstance(s3, Upstream):
        async def upstream_page(bucket: str, prefix: str, key_marker: str, version_id_marker: str) -> dict[str, Any]:
            return await s3.list_object_versions(bucket, prefix=prefix, key_marker=key_marker,
                                                 version_id_marker=version_id_marker)

        return upstream_page, s3.delete_object

    async def page(bucket: str, prefix: str, key_marker: str, version_id_marker: str) -> dict[str, Any]:
        markers = {"KeyMarker": key_marker, "VersionIdMarker": version_id_marker} if key_marker else {}
        return await s3.list_object_versions(Bucket=bucket, Prefix=prefix, **markers)

    async def delete(bucket: str, key: str, version_id: str = "") -> Mapping[str, str]:
        answer = await s3.delete_object(Bucket=bucket, Key=key, **({"VersionId": version_id} if version_id else {}))
        return answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})

    return page, delete


async def version_pages(s3: Upstream | Any, bucket: str, prefix: str, *,
                        max_pages: int = 100) -> AsyncIterator[list[Version]]:
    """ListObjectVersions under `prefix`, a page (up to 1,000 entries) at a time, at most `max_pages` pages."""
    list_page, _ = _operations(s3)
    key_marker = version_id_marker = ""
    for _ in range(max_pages):
        page = await list_page(bucket, prefix, key_marker, version_id_marker)
        entries = [Version(v["Key"], str(v.get("VersionId") or NULL_VERSION), v["LastModified"])
                   for v in page.get("Versions", [])]
        entries += [Version(m["Key"], str(m.get("VersionId") or NULL_VERSION), m["LastModified"], True)
                    for m in page.get("DeleteMarkers", [])]
        yield entries
        if not page.get("IsTruncated"):
            return
        key_marker = str(page.get("NextKeyMarker") or "")
        version_id_marker = str(page.get("NextVersionIdMarker") or "")
        if not key_marker:
            return


async def versions_of(s3: Upstream | Any, bucket: str, key: str) -> list[Version]:
    """Every version and delete marker of exactly `key` (keys that merely start with it are left out)."""
    found: list[Version] = []
    async for page in version_pages(s3, bucket, key):
        found.extend(v for v in page if v.key == key)
        if any(v.key > key for v in page):  # listed in key order: past `key`, nothing more of it follows
            break
    return found


async def delete_versions(s3: Upstream | Any, bucket: str, versions: list[Version]) -> None:
    """Delete the given versions of one key by their ids; a lone unversioned object by a plain DELETE."""
    _, delete = _operations(s3)
    if len(versions) == 1 and versions[0].version_id in ("", NULL_VERSION):
        await delete(bucket, versions[0].key, "")
        return
    for version in versions:
        await delete(bucket, version.key, version.version_id)


async def delete_every_version(s3: Upstream | Any, bucket: str, key: str) -> bool:
    """Delete `key`; where the bucket keeps versions (the answer names one), every version and delete marker too.

    False when the versions could not be removed because the upstream refuses listing or deleting them: the key
    is hidden (a delete marker) but its bytes stay as old versions. That is logged, not raised: the caller's
    work (a landed upload, a purge) is done, and failing it would not bring the versions back.
    """
    headers = await _operations(s3)[1](bucket, key, "")
    if "x-amz-version-id" not in headers and "x-amz-delete-marker" not in headers:
        return True  # an unversioned bucket: the object is gone
    try:
        await delete_versions(s3, bucket, await versions_of(s3, bucket, key))
    except (S3Error, ClientError) as exc:
        if not refused(exc):
            raise
        log.warning("s3://%s/%s is deleted but its old versions stay: the upstream refuses to list or delete object "
                    "versions (grant s3:ListBucketVersions and s3:DeleteObjectVersion)", bucket, key)
        return False
    return True
