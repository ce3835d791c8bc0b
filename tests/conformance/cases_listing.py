"""Listing cases: ListObjects v1 and v2 (prefix, delimiter, marker, pagination, URL encoding, odd keys, the
XML as written) and ListObjectVersions."""

from __future__ import annotations

from urllib.parse import quote

from tests.conformance.harness import Side, case

KEYS = ("a/1.jpg", "a/2.jpg", "a/b/3.jpg", "b/4.jpg", "top.jpg", "sp ace/x", "ünï/y", "plus+sign", "pct%41",
        "amp&er", "lt<gt>", "tab\tkey")
RGW_URL = {"rgw": "Ceph 16 does not URL-encode Prefix and Marker with encoding-type=url (S3 does)"}
V1_FIELDS = ("Prefix", "Marker", "NextMarker", "Delimiter", "MaxKeys", "IsTruncated", "Key", "Size", "ETag",
             "EncodingType")
V2_FIELDS = ("Prefix", "StartAfter", "Delimiter", "MaxKeys", "KeyCount", "IsTruncated", "Key", "Size", "ETag",
             "EncodingType")


def _fill(side: Side) -> None:
    for key in KEYS:
        side.call(f"put {key}", "put_object", Bucket=side.bucket(), Key=key, Body=key.encode(), keep=("status",))


@case("ListObjects", "PutObject")
def case_list_v1(side: Side) -> None:
    _fill(side)
    side.call("all", "list_objects", Bucket=side.bucket())
    side.call("prefix a/", "list_objects", Bucket=side.bucket(), Prefix="a/")
    side.call("delimiter /", "list_objects", Bucket=side.bucket(), Delimiter="/")
    side.call("prefix a/ delimiter /", "list_objects", Bucket=side.bucket(), Prefix="a/", Delimiter="/")
    side.call("page 1 of 3 keys", "list_objects", Bucket=side.bucket(), MaxKeys=3,
              unless={"moto": "moto writes an ETag as NextMarker"})
    side.call("marker a/2.jpg", "list_objects", Bucket=side.bucket(), Marker="a/2.jpg",
              unless={"moto": "moto does not echo Marker"})
    side.call("page with delimiter", "list_objects", Bucket=side.bucket(), Delimiter="/", MaxKeys=2,
              unless={"moto": "moto ignores max-keys when a delimiter is given"})
    side.call("missing bucket", "list_objects", Bucket=side.bucket() + "-missing")


@case("ListObjects", "PutObject",
      exclude={"moto": "moto omits an empty Marker and does not URL-encode Prefix/Marker with encoding-type=url"})
def case_list_v1_xml_encoding(side: Side) -> None:
    """The v1 XML as S3 writes it: Prefix and Marker echoed, url-encoded only with encoding-type=url."""
    _fill(side)
    for label, params in (("prefix ünï/", {"prefix": "ünï/"}), ("prefix sp ace/", {"prefix": "sp ace/"}),
                          ("marker plus+sign", {"marker": "plus+sign"}), ("prefix pct%", {"prefix": "pct%"}),
                          ("prefix with delimiter", {"prefix": "a/", "delimiter": "/"})):
        for encoding in ("", "url"):
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
            query += "&encoding-type=url" if encoding else ""
            side.raw(f"v1 {label} {encoding or 'plain'}", "GET", side.bucket(), query=query, fields=V1_FIELDS,
                     unless=RGW_URL if encoding else None)


@case("ListObjectsV2", "PutObject")
def case_list_v2(side: Side) -> None:
    _fill(side)
    side.call("all", "list_objects_v2", Bucket=side.bucket())
    side.call("prefix a/ delimiter /", "list_objects_v2", Bucket=side.bucket(), Prefix="a/", Delimiter="/")
    side.call("start-after b/4.jpg", "list_objects_v2", Bucket=side.bucket(), StartAfter="b/4.jpg")
    first = side.call("page 1", "list_objects_v2", Bucket=side.bucket(), MaxKeys=5)
    if first is not None and first.get("NextContinuationToken"):
        side.call("page 2", "list_objects_v2", Bucket=side.bucket(), MaxKeys=5,
                  ContinuationToken=first["NextContinuationToken"])
    side.call("fetch-owner", "list_objects_v2", Bucket=side.bucket(), Prefix="top", FetchOwner=True,
              keep=("KeyCount", "Contents", "status"))
    for encoding in ("", "&encoding-type=url"):
        side.raw(f"v2 xml ünï {encoding or 'plain'}", "GET", side.bucket(),
                 query=f"list-type=2&prefix={quote('ünï/', safe='')}{encoding}", fields=V2_FIELDS,
                 unless=RGW_URL if encoding else None)
        side.raw(f"v2 xml delimiter {encoding or 'plain'}", "GET", side.bucket(),
                 query=f"list-type=2&delimiter=%2F{encoding}", fields=(*V2_FIELDS, "CommonPrefixes"))


@case("ListObjectVersions", "PutObject")
def case_list_object_versions(side: Side) -> None:
    for key in ("v/1", "v/2", "w/3"):
        side.call(f"put {key}", "put_object", Bucket=side.bucket(), Key=key, Body=b"v", keep=("status",))
    side.call("versions", "list_object_versions", Bucket=side.bucket())
    side.call("versions under v/", "list_object_versions", Bucket=side.bucket(), Prefix="v/")
    side.call("versions delimiter", "list_object_versions", Bucket=side.bucket(), Delimiter="/")


@case("ListObjectVersions", "GetBucketVersioning", "GetObject", "HeadObject", "DeleteObject", "PutObject")
def case_versioned_bucket(side: Side) -> None:
    """A bucket versioned on the upstream (set up directly: the proxy answers PutBucketVersioning 501)."""
    side.admin.put_bucket_versioning(Bucket=side.bucket(), VersioningConfiguration={"Status": "Enabled"})
    side.call("versioning", "get_bucket_versioning", Bucket=side.bucket())
    for body in (b"first", b"second"):
        side.call(f"put {body.decode()}", "put_object", Bucket=side.bucket(), Key="v", Body=body,
                  keep=("status", "VersionId"))
    side.call("delete (a marker)", "delete_object", Bucket=side.bucket(), Key="v")
    listed = side.call("versions", "list_object_versions", Bucket=side.bucket())
    side.call("get the current (deleted)", "get_object", Bucket=side.bucket(), Key="v")
    versions = listed.get("Versions", []) if listed else []  # newest first, as S3 lists them
    if versions:
        first = versions[-1]["VersionId"]
        side.call("get the first version", "get_object", Bucket=side.bucket(), Key="v", VersionId=first,
                  keep=("Body", "ContentLength", "status"))
        side.call("head the first version", "head_object", Bucket=side.bucket(), Key="v", VersionId=first,
                  keep=("ContentLength", "status"))
        side.call("delete the first version", "delete_object", Bucket=side.bucket(), Key="v", VersionId=first,
                  keep=("status",))
    side.call("versions after", "list_object_versions", Bucket=side.bucket())
