"""S3 XML documents: parsing what clients send (with defusedxml) and rendering replies."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from xml.etree.ElementTree import Element, SubElement, tostring

from defusedxml import ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException

from proxy.s3.errors import S3Error

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_COMPLETE_BODY_BYTES = 2 * 1024 * 1024


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_complete_multipart(body: bytes, max_parts: int = 10000, *, check_order: bool = True) -> list[tuple[int, str]]:
    """The (PartNumber, ETag) list of a CompleteMultipartUpload body, ascending as S3 requires.

    With `check_order=False` the caller checks the order itself with :func:`check_part_order` (S3 reports a
    too-small part before a wrong order)."""
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
    if check_order:
        check_part_order(parts)
    return parts


def check_part_order(parts: list[tuple[int, str]]) -> None:
    numbers = [n for n, _ in parts]
    if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
        raise S3Error("InvalidPartOrder")


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


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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


def copy_result(root_name: str, etag: str, last_modified: datetime, checksums: dict[str, str] | None = None) -> bytes:
    """CopyObjectResult or CopyPartResult; `checksums` as the upstream named them (ChecksumCRC32, ...)."""
    root = _root(root_name)
    _text(root, "LastModified", _iso(last_modified))
    _text(root, "ETag", etag)
    for name, value in (checksums or {}).items():
        _text(root, name, value)
    return _document(root)


def location_constraint(region: str) -> bytes:
    root = _root("LocationConstraint")
    root.text = "" if region == "us-east-1" else region
    return _document(root)
