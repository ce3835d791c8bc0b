"""S3 listing documents: ListBucketResult (v1 and v2), upstream version listings filtered for clients, and
the proxy's own multipart listings (ListMultipartUploadsResult, ListPartsResult)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote
from xml.etree.ElementTree import Element, SubElement

from proxy.s3.xml import NAMESPACE, _document, _iso, _local, _root, _text, parse_document


@dataclass(frozen=True)
class ListedObject:
    key: str
    last_modified: datetime
    etag: str
    size: int
    storage_class: str = "STANDARD"
    owner: tuple[str, str] | None = None  # (ID, DisplayName) when the listing carries owners
    checksum_algorithms: tuple[str, ...] = ()


def _listing_entries(root: Element, objects: Iterable[ListedObject], common_prefixes: Iterable[str],
                     enc: Callable[[str], str]) -> None:
    for item in objects:
        contents = SubElement(root, "Contents")
        _text(contents, "Key", enc(item.key))
        _text(contents, "LastModified", _iso(item.last_modified))
        _text(contents, "ETag", item.etag)
        for algorithm in item.checksum_algorithms:
            _text(contents, "ChecksumAlgorithm", algorithm)
        _text(contents, "Size", item.size)
        if item.owner is not None:
            owner = SubElement(contents, "Owner")
            _text(owner, "ID", item.owner[0])
            _text(owner, "DisplayName", item.owner[1])
        _text(contents, "StorageClass", item.storage_class)
    for common in common_prefixes:
        element = SubElement(root, "CommonPrefixes")
        _text(element, "Prefix", enc(common))


def list_objects_v2_result(
    *,
    bucket: str,
    prefix: str,
    delimiter: str,
    max_keys: int,
    objects: Iterable[ListedObject],
    common_prefixes: Iterable[str],
    is_truncated: bool,
    continuation_token: str = "",
    next_continuation_token: str = "",
    start_after: str = "",
    encoding_type: str = "",
    key_count: int | None = None,
) -> bytes:
    """A ListBucketResult for ListObjectsV2; with encoding-type=url, keys and prefixes are URL-encoded."""

    def enc(value: str) -> str:
        return quote(value, safe="/") if encoding_type == "url" else value

    objects = list(objects)
    common_prefixes = list(common_prefixes)
    root = _root("ListBucketResult")
    _text(root, "Name", bucket)
    _text(root, "Prefix", enc(prefix))
    if delimiter:
        _text(root, "Delimiter", enc(delimiter))
    _text(root, "MaxKeys", max_keys)
    _text(root, "KeyCount", key_count if key_count is not None else len(objects) + len(common_prefixes))
    _text(root, "IsTruncated", "true" if is_truncated else "false")
    if encoding_type:
        _text(root, "EncodingType", encoding_type)
    if continuation_token:
        _text(root, "ContinuationToken", continuation_token)
    if next_continuation_token:
        _text(root, "NextContinuationToken", next_continuation_token)
    if start_after:
        _text(root, "StartAfter", enc(start_after))
    _listing_entries(root, objects, common_prefixes, enc)
    return _document(root)


def list_objects_v1_result(
    *,
    bucket: str,
    prefix: str,
    delimiter: str,
    max_keys: int,
    objects: Iterable[ListedObject],
    common_prefixes: Iterable[str],
    is_truncated: bool,
    marker: str = "",
    next_marker: str = "",
    encoding_type: str = "",
) -> bytes:
    """A ListBucketResult for the original ListObjects (s3cmd and older clients still use it)."""

    def enc(value: str) -> str:
        return quote(value, safe="/") if encoding_type == "url" else value

    root = _root("ListBucketResult")
    _text(root, "Name", bucket)
    _text(root, "Prefix", enc(prefix))
    _text(root, "Marker", enc(marker))
    if next_marker:
        _text(root, "NextMarker", enc(next_marker))
    _text(root, "MaxKeys", max_keys)
    if delimiter:
        _text(root, "Delimiter", enc(delimiter))
    _text(root, "IsTruncated", "true" if is_truncated else "false")
    if encoding_type:
        _text(root, "EncodingType", encoding_type)
    _listing_entries(root, objects, common_prefixes, enc)
    return _document(root)


def filter_listing(body: bytes, bucket: str, hidden_prefix: str, url_encoded: bool) -> bytes:
    """An upstream listing (ListVersionsResult, ...) named for the client's bucket, without hidden keys."""
    root = parse_document(body, "")
    for element in list(root):
        name = _local(element.tag)
        if name == "Name":
            element.text = bucket
            continue
        key_text = element.findtext(f"{{{NAMESPACE}}}Key") if name in ("Version", "DeleteMarker", "Contents") \
            else element.findtext(f"{{{NAMESPACE}}}Prefix") if name == "CommonPrefixes" else None
        if key_text is None:
            continue
        key = unquote(key_text) if url_encoded else key_text
        if key.startswith(hidden_prefix):
            root.remove(element)
    _strip_namespace_prefixes(root)
    return _document(root)


def _strip_namespace_prefixes(root: Element) -> None:
    """ElementTree writes `ns0:` prefixes for a parsed namespace; S3 writes a default namespace."""
    for element in root.iter():
        if element.tag.startswith(f"{{{NAMESPACE}}}"):
            element.tag = element.tag[len(NAMESPACE) + 2:]
    root.set("xmlns", NAMESPACE)


@dataclass(frozen=True)
class ListedUpload:
    key: str
    upload_id: str
    initiated: datetime
    owner: str


def list_multipart_uploads_result(*, bucket: str, uploads: Iterable[ListedUpload], prefix: str, delimiter: str,
                                  key_marker: str, upload_id_marker: str, max_uploads: int, is_truncated: bool,
                                  next_key_marker: str, next_upload_id_marker: str,
                                  common_prefixes: Iterable[str] = (), encoding_type: str = "") -> bytes:
    def enc(value: str) -> str:
        return quote(value, safe="/") if encoding_type == "url" else value

    root = _root("ListMultipartUploadsResult")
    _text(root, "Bucket", bucket)
    _text(root, "KeyMarker", enc(key_marker))
    _text(root, "UploadIdMarker", upload_id_marker)
    _text(root, "NextKeyMarker", enc(next_key_marker))
    _text(root, "NextUploadIdMarker", next_upload_id_marker)
    _text(root, "Prefix", enc(prefix))
    if delimiter:
        _text(root, "Delimiter", enc(delimiter))
    _text(root, "MaxUploads", max_uploads)
    _text(root, "IsTruncated", "true" if is_truncated else "false")
    if encoding_type:
        _text(root, "EncodingType", encoding_type)
    for upload in uploads:
        element = SubElement(root, "Upload")
        _text(element, "Key", enc(upload.key))
        _text(element, "UploadId", upload.upload_id)
        for role in ("Initiator", "Owner"):
            person = SubElement(element, role)
            _text(person, "ID", upload.owner)
            _text(person, "DisplayName", upload.owner)
        _text(element, "StorageClass", "STANDARD")
        _text(element, "Initiated", _iso(upload.initiated))
    for common in common_prefixes:
        _text(SubElement(root, "CommonPrefixes"), "Prefix", enc(common))
    return _document(root)


@dataclass(frozen=True)
class ListedPart:
    number: int
    etag: str
    size: int
    last_modified: datetime


def list_parts_result(*, bucket: str, key: str, upload_id: str, owner: str, parts: Iterable[ListedPart],
                      marker: int, next_marker: int, max_parts: int, is_truncated: bool) -> bytes:
    root = _root("ListPartsResult")
    _text(root, "Bucket", bucket)
    _text(root, "Key", key)
    _text(root, "UploadId", upload_id)
    for role in ("Initiator", "Owner"):
        person = SubElement(root, role)
        _text(person, "ID", owner)
        _text(person, "DisplayName", owner)
    _text(root, "StorageClass", "STANDARD")
    _text(root, "PartNumberMarker", marker)
    _text(root, "NextPartNumberMarker", next_marker)
    _text(root, "MaxParts", max_parts)
    _text(root, "IsTruncated", "true" if is_truncated else "false")
    for part in parts:
        element = SubElement(root, "Part")
        _text(element, "PartNumber", part.number)
        _text(element, "LastModified", _iso(part.last_modified))
        _text(element, "ETag", part.etag)
        _text(element, "Size", part.size)
    return _document(root)
