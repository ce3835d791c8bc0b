"""S3 XML documents: parsing what clients send (with defusedxml) and rendering replies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote
from xml.etree.ElementTree import Element, SubElement, tostring

from defusedxml import ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException

from proxy.s3.errors import S3Error

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_COMPLETE_BODY_BYTES = 2 * 1024 * 1024


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_complete_multipart(body: bytes, max_parts: int = 10000) -> list[tuple[int, str]]:
    """The (PartNumber, ETag) list of a CompleteMultipartUpload body, ascending as S3 requires."""
    if len(body) > MAX_COMPLETE_BODY_BYTES:
        raise S3Error("MalformedXML", "The CompleteMultipartUpload body is too large.")
    try:
        root = SafeElementTree.fromstring(body)
    except (SafeElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise S3Error("MalformedXML") from exc
    if _local(root.tag) != "CompleteMultipartUpload":
        raise S3Error("MalformedXML")
    parts: list[tuple[int, str]] = []
    for element in root:
        if _local(element.tag) != "Part":
            continue
        fields = {_local(child.tag): (child.text or "").strip() for child in element}
        try:
            number = int(fields["PartNumber"])
            etag = fields["ETag"]
        except (KeyError, ValueError) as exc:
            raise S3Error("MalformedXML") from exc
        if not 1 <= number <= max_parts:
            raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and {max_parts}.")
        parts.append((number, etag))
        if len(parts) > max_parts:
            raise S3Error("MalformedXML", "Too many parts.")
    if not parts:
        raise S3Error("MalformedXML", "The XML you provided did not list any parts.")
    numbers = [n for n, _ in parts]
    if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
        raise S3Error("InvalidPartOrder")
    return parts


def _document(root: Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="utf-8")


def _root(name: str) -> Element:
    return Element(name, xmlns=NAMESPACE)


def _text(parent: Element, name: str, value: object) -> None:
    SubElement(parent, name).text = str(value)


def initiate_multipart_result(bucket: str, key: str, upload_id: str) -> bytes:
    root = _root("InitiateMultipartUploadResult")
    _text(root, "Bucket", bucket)
    _text(root, "Key", key)
    _text(root, "UploadId", upload_id)
    return _document(root)


def complete_multipart_result(location: str, bucket: str, key: str, etag: str) -> bytes:
    root = _root("CompleteMultipartUploadResult")
    _text(root, "Location", location)
    _text(root, "Bucket", bucket)
    _text(root, "Key", key)
    _text(root, "ETag", etag)
    return _document(root)


@dataclass(frozen=True)
class ListedObject:
    key: str
    last_modified: datetime
    etag: str
    size: int
    storage_class: str = "STANDARD"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _listing_entries(root: Element, objects: Iterable[ListedObject], common_prefixes: Iterable[str],
                     enc: Callable[[str], str]) -> None:
    for item in objects:
        contents = SubElement(root, "Contents")
        _text(contents, "Key", enc(item.key))
        _text(contents, "LastModified", _iso(item.last_modified))
        _text(contents, "ETag", item.etag)
        _text(contents, "Size", item.size)
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
