"""S3 XML documents: parsing what clients send (with defusedxml) and rendering replies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote
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


def parse_document(body: bytes, root_name: str) -> Element:
    """A small client or upstream document, parsed with defusedxml; `root_name` checked when given."""
    if len(body) > MAX_COMPLETE_BODY_BYTES:
        raise S3Error("MalformedXML", "The XML document is too large.")
    try:
        root = SafeElementTree.fromstring(body)
    except (SafeElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise S3Error("MalformedXML") from exc
    if root_name and _local(root.tag) != root_name:
        raise S3Error("MalformedXML")
    return root


def parse_delete(body: bytes, max_keys: int = 1000) -> tuple[list[dict[str, str]], bool]:
    """The objects ({Key, VersionId?}) and the Quiet flag of a DeleteObjects body."""
    root = parse_document(body, "Delete")
    objects: list[dict[str, str]] = []
    quiet = False
    for element in root:
        name = _local(element.tag)
        if name == "Quiet":
            quiet = (element.text or "").strip().lower() == "true"
        elif name == "Object":
            fields = {_local(child.tag): child.text or "" for child in element}
            if "Key" not in fields:
                raise S3Error("MalformedXML")
            item = {"Key": fields["Key"]}
            if fields.get("VersionId"):
                item["VersionId"] = fields["VersionId"]
            objects.append(item)
            if len(objects) > max_keys:
                raise S3Error("MalformedXML", f"A DeleteObjects request may name at most {max_keys} keys.")
    if not objects:
        raise S3Error("MalformedXML")
    return objects, quiet


def delete_result(deleted: Iterable[dict], errors: Iterable[dict]) -> bytes:
    root = _root("DeleteResult")
    for item in deleted:
        element = SubElement(root, "Deleted")
        _text(element, "Key", item["Key"])
        for name in ("VersionId", "DeleteMarker", "DeleteMarkerVersionId"):
            if item.get(name) not in (None, ""):
                value = item[name]
                _text(element, name, str(value).lower() if isinstance(value, bool) else value)
    for item in errors:
        element = SubElement(root, "Error")
        _text(element, "Key", item.get("Key", ""))
        if item.get("VersionId"):
            _text(element, "VersionId", item["VersionId"])
        _text(element, "Code", item.get("Code", "InternalError"))
        _text(element, "Message", item.get("Message", ""))
    return _document(root)


def list_buckets_result(buckets: Iterable[tuple[str, datetime]], owner_id: str = "bucketguard") -> bytes:
    root = _root("ListAllMyBucketsResult")
    owner = SubElement(root, "Owner")
    _text(owner, "ID", owner_id)
    _text(owner, "DisplayName", owner_id)
    listing = SubElement(root, "Buckets")
    for name, created in buckets:
        element = SubElement(listing, "Bucket")
        _text(element, "Name", name)
        _text(element, "CreationDate", _iso(created))
    return _document(root)


def copy_result(root_name: str, etag: str, last_modified: datetime) -> bytes:
    """CopyObjectResult or CopyPartResult."""
    root = _root(root_name)
    _text(root, "LastModified", _iso(last_modified))
    _text(root, "ETag", etag)
    return _document(root)


def location_constraint(region: str) -> bytes:
    root = _root("LocationConstraint")
    root.text = "" if region == "us-east-1" else region
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
