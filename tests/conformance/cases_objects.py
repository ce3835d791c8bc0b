"""Object cases: put/get/head/delete, ranges, conditions, UTF-8 metadata, conditional writes, checksums,
DeleteObjects, CopyObject; and the pict-rs-like cases through the mapped proxy."""

from __future__ import annotations

import base64
import datetime
import hashlib

from tests.conformance.harness import Side, case

BODY = bytes(range(256)) * 40  # 10,240 bytes
FUTURE = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
PAST = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
MOTO_COPY = {"moto": "moto ignores the x-amz-copy-source-if-* conditions",
             "rgw": "Ceph 16 copies although an x-amz-copy-source-if-* condition fails"}
MOTO_DIGEST = {"moto": "moto stores a body whose Content-MD5 or x-amz-checksum-* does not match"}
NO_SHA_CHECK = {**MOTO_DIGEST, "rgw": "Ceph 16 stores a body whose x-amz-checksum-sha256 does not match"}


RGW_UNQUOTED = {"rgw": ("CopyObjectResult",)}  # Ceph 16 writes the copy's ETag without quotes


def _put(side: Side, key: str, body: bytes = BODY, bucket: str = "a", **params: object) -> dict | None:
    return side.call(f"put {key}", "put_object", Bucket=side.bucket(bucket), Key=side.key(key), Body=body, **params)


@case("PutObject", "GetObject", "HeadObject", "DeleteObject")
def case_put_get_head_delete(side: Side) -> None:
    _put(side, "photo.jpg", ContentType="image/jpeg", Metadata={"origin": "conformance"},
         CacheControl="max-age=60", ContentDisposition='inline; filename="p.jpg"')
    side.call("get", "get_object", Bucket=side.bucket(), Key=side.key("photo.jpg"))
    side.call("head", "head_object", Bucket=side.bucket(), Key=side.key("photo.jpg"))
    side.call("get with response overrides", "get_object", Bucket=side.bucket(), Key=side.key("photo.jpg"),
              ResponseContentType="text/plain", ResponseCacheControl="no-cache")
    side.call("get versionId=null", "get_object", Bucket=side.bucket(), Key=side.key("photo.jpg"), VersionId="null",
              keep=("Body", "ContentLength", "status"))
    side.call("head versionId=null", "head_object", Bucket=side.bucket(), Key=side.key("photo.jpg"),
              VersionId="null", keep=("ContentLength", "status"))
    side.call("get missing", "get_object", Bucket=side.bucket(), Key=side.key("missing"))
    side.call("head missing", "head_object", Bucket=side.bucket(), Key=side.key("missing"))
    side.call("delete", "delete_object", Bucket=side.bucket(), Key=side.key("photo.jpg"))
    side.call("get deleted", "get_object", Bucket=side.bucket(), Key=side.key("photo.jpg"))
    side.call("delete missing", "delete_object", Bucket=side.bucket(), Key=side.key("photo.jpg"))
    _put(side, "empty", body=b"")
    side.call("get empty", "get_object", Bucket=side.bucket(), Key=side.key("empty"))
    side.raw("get in a missing bucket", "GET", "cf-no-such-bucket-anywhere", "k")


@case("GetObject", "HeadObject")
def case_ranged_gets(side: Side) -> None:
    _put(side, "r.bin")
    for label, byte_range in (("first ten", "bytes=0-9"), ("suffix", "bytes=-10"), ("open end", "bytes=10240-"),
                              ("to the end", "bytes=10000-"), ("past the end", "bytes=20000-20010"),
                              ("end clipped", "bytes=10230-99999"), ("malformed", "bytes=abc"),
                              ("one byte", "bytes=0-0"), ("suffix longer than the object", "bytes=-20000"),
                              ("two ranges (S3 answers the whole object)", "bytes=0-1,5-6")):
        side.call(f"get {label}", "get_object", Bucket=side.bucket(), Key=side.key("r.bin"), Range=byte_range)
    side.call("head ranged", "head_object", Bucket=side.bucket(), Key=side.key("r.bin"), Range="bytes=0-9")
    side.call("get part 1", "get_object", Bucket=side.bucket(), Key=side.key("r.bin"), PartNumber=1)


@case("GetObject", "HeadObject")
def case_conditional_gets(side: Side) -> None:
    put = _put(side, "c.bin")
    etag = put["ETag"] if put else '"none"'
    for operation in ("get_object", "head_object"):
        verb = operation.split("_")[0]
        common = {"Bucket": side.bucket(), "Key": side.key("c.bin")}
        side.call(f"{verb} If-Match right", operation, IfMatch=etag, **common)
        side.call(f"{verb} If-Match wrong", operation, IfMatch='"0123"', **common)
        side.call(f"{verb} If-None-Match right", operation, IfNoneMatch=etag, **common)
        side.call(f"{verb} If-None-Match other", operation, IfNoneMatch='"0123"', **common)
        side.call(f"{verb} If-Modified-Since future", operation, IfModifiedSince=FUTURE, **common)
        side.call(f"{verb} If-Unmodified-Since past", operation, IfUnmodifiedSince=PAST, **common)
        side.call(f"{verb} If-Match right and If-Unmodified-Since past", operation, IfMatch=etag,
                  IfUnmodifiedSince=PAST, **common)


@case("PutObject", "GetObject", "HeadObject",
      exclude={"moto": "moto refuses a correctly signed UTF-8 metadata value with SignatureDoesNotMatch"})
def case_utf8_metadata(side: Side) -> None:
    """Metadata values are sent as UTF-8 bytes (signed as such) and come back byte for byte."""
    headers = {"x-amz-meta-title": "Café ☕ ünïcode", "x-amz-meta-plain": "ascii", "content-type": "image/png"}
    side.raw("put with UTF-8 metadata", "PUT", side.bucket(), side.key("u.png"), headers=headers, body=b"png")
    side.raw("get", "GET", side.bucket(), side.key("u.png"),
             response_headers=("x-amz-meta-title", "x-amz-meta-plain", "content-type"))
    side.raw("head", "HEAD", side.bucket(), side.key("u.png"), response_headers=("x-amz-meta-title",))


@case("PutObject", "HeadObject")
def case_conditional_put(side: Side) -> None:
    side.call("If-None-Match * on a new key", "put_object", Bucket=side.bucket(), Key=side.key("w"), Body=b"1",
              IfNoneMatch="*")
    side.call("If-None-Match * on an existing key", "put_object", Bucket=side.bucket(), Key=side.key("w"),
              Body=b"2", IfNoneMatch="*")
    head = side.call("head", "head_object", Bucket=side.bucket(), Key=side.key("w"))
    etag = head["ETag"] if head else '"none"'
    side.call("If-Match wrong", "put_object", Bucket=side.bucket(), Key=side.key("w"), Body=b"3",
              IfMatch='"0123456789abcdef0123456789abcdef"')
    side.call("If-Match right", "put_object", Bucket=side.bucket(), Key=side.key("w"), Body=b"4", IfMatch=etag)
    side.call("get", "get_object", Bucket=side.bucket(), Key=side.key("w"))


@case("PutObject", "GetObject")
def case_checksums(side: Side) -> None:
    body = b"checksummed body"
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    side.call("put with a SHA-256 checksum", "put_object", Bucket=side.bucket(), Key=side.key("s"), Body=body,
              ChecksumSHA256=sha256, unless={"moto": "moto does not echo x-amz-checksum-sha256"})
    side.raw("put with a wrong SHA-256 checksum", "PUT", side.bucket(), side.key("bad-sha"), body=body,
             headers={"x-amz-checksum-sha256": base64.b64encode(b"\0" * 32).decode()}, unless=NO_SHA_CHECK)
    side.raw("put with a right Content-MD5", "PUT", side.bucket(), side.key("md5"), body=body,
             headers={"content-md5": md5}, response_headers=("etag",))
    side.raw("put with a wrong Content-MD5", "PUT", side.bucket(), side.key("bad-md5"), body=body,
             headers={"content-md5": base64.b64encode(b"\0" * 16).decode()}, unless=MOTO_DIGEST)
    side.call("get bad-sha (must not exist)", "head_object", Bucket=side.bucket(), Key=side.key("bad-sha"),
              unless=NO_SHA_CHECK)
    side.call("get bad-md5 (must not exist)", "head_object", Bucket=side.bucket(), Key=side.key("bad-md5"),
              unless=MOTO_DIGEST)
    side.call("get with checksum mode", "get_object", Bucket=side.bucket(), Key=side.key("s"),
              ChecksumMode="ENABLED")


@case("DeleteObjects", "PutObject", "ListObjectsV2")
def case_delete_objects(side: Side) -> None:
    for name in ("d1", "d2", "d3", "d4"):
        _put(side, name, body=name.encode())
    deleted = side.call("delete two and a missing one", "delete_objects", Bucket=side.bucket(), keep=("Errors",),
                        Delete={"Objects": [{"Key": side.key("d1")}, {"Key": side.key("d2")},
                                            {"Key": side.key("nope")}]})
    if deleted is not None:  # S3 promises no order
        side.note("deleted keys", sorted(item["Key"] for item in deleted.get("Deleted", [])))
    side.call("quiet", "delete_objects", Bucket=side.bucket(), Delete={
        "Objects": [{"Key": side.key("d3")}], "Quiet": True}, unless={"moto": "moto lists deletions in quiet mode"})
    side.call("left", "list_objects_v2", Bucket=side.bucket(), Prefix=side.key(""), keep=("KeyCount", "Contents"))
    side.raw("malformed XML", "POST", side.bucket(), query="delete", body=b"<Delete><Object><Key>x</Ke",
             headers={"content-md5": base64.b64encode(hashlib.md5(b"<Delete><Object><Key>x</Ke").digest()).decode()},
             unless={"moto": "moto answers malformed XML with a 500 HTML page",
                     "rgw": "Ceph 16 answers malformed XML with a 400 without an error code"})
    many = "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(1001)).encode()
    body = b"<Delete>" + many + b"</Delete>"
    side.raw("1,001 keys", "POST", side.bucket(), query="delete", body=body,
             headers={"content-md5": base64.b64encode(hashlib.md5(body).digest()).decode()},
             unless={"moto": "moto deletes more than 1,000 keys in one request",
                     "rgw": "Ceph 16 answers 1,001 keys with a 400 without an error code"})
    side.call("d4 still there", "head_object", Bucket=side.bucket(), Key=side.key("d4"))
    thousand = side.call("1,000 keys (the most S3 takes)", "delete_objects", Bucket=side.bucket(), keep=("Errors",),
                         Delete={"Objects": [{"Key": side.key(f"none/{i}")} for i in range(1000)], "Quiet": False})
    if thousand is not None:
        side.note("1,000 deleted", len(thousand.get("Deleted", [])))


@case("CopyObject", "PutObject", "HeadObject", "GetObject", buckets=("a", "b"))
def case_copy_object(side: Side) -> None:
    put = _put(side, "src", ContentType="image/gif", Metadata={"one": "1"})
    etag = put["ETag"] if put else '"none"'
    source = {"Bucket": side.bucket(), "Key": side.key("src")}
    side.call("copy, metadata copied", "copy_object", Bucket=side.bucket(), Key=side.key("dst1"), CopySource=source,
              keep=("CopyObjectResult", "status"), ignore=RGW_UNQUOTED)
    side.call("head dst1", "head_object", Bucket=side.bucket(), Key=side.key("dst1"))
    side.call("copy, metadata replaced", "copy_object", Bucket=side.bucket("b"), Key=side.key("dst2"),
              CopySource=source, MetadataDirective="REPLACE", Metadata={"two": "2"}, ContentType="image/png",
              keep=("CopyObjectResult", "status"), ignore=RGW_UNQUOTED)
    side.call("head dst2", "head_object", Bucket=side.bucket("b"), Key=side.key("dst2"))
    side.call("get dst2", "get_object", Bucket=side.bucket("b"), Key=side.key("dst2"))
    side.call("copy onto itself without REPLACE", "copy_object", Bucket=side.bucket(), Key=side.key("src"),
              CopySource=source)
    side.call("copy a missing key", "copy_object", Bucket=side.bucket(), Key=side.key("x"),
              CopySource={"Bucket": side.bucket(), "Key": side.key("missing")})
    side.call("copy-source-if-match right", "copy_object", Bucket=side.bucket(), Key=side.key("c1"),
              CopySource=source, CopySourceIfMatch=etag, keep=("CopyObjectResult", "status"), ignore=RGW_UNQUOTED)
    side.call("copy-source-if-match wrong", "copy_object", Bucket=side.bucket(), Key=side.key("c2"),
              CopySource=source, CopySourceIfMatch='"0123"', unless=MOTO_COPY)
    side.call("copy-source-if-none-match right", "copy_object", Bucket=side.bucket(), Key=side.key("c3"),
              CopySource=source, CopySourceIfNoneMatch=etag, unless=MOTO_COPY)
    side.call("copy-source-if-unmodified-since past", "copy_object", Bucket=side.bucket(), Key=side.key("c4"),
              CopySource=source, CopySourceIfUnmodifiedSince=PAST, unless=MOTO_COPY)
    side.call("copy-source-if-modified-since future", "copy_object", Bucket=side.bucket(), Key=side.key("c5"),
              CopySource=source, CopySourceIfModifiedSince=FUTURE, unless=MOTO_COPY)
    side.call("c2..c5 not written", "list_objects_v2", Bucket=side.bucket(), Prefix=side.key("c"),
              keep=("KeyCount",), unless=MOTO_COPY)


@case("PutObject", "GetObject", "HeadObject", "ListObjectsV2", "DeleteObject", mode="mapped")
def case_mapped_pictrs_objects(side: Side) -> None:
    """pict-rs' own requests, through the bucket map (`pictrs` -> the real bucket)."""
    _put(side, "files/abc.webp", ContentType="image/webp")
    side.call("head", "head_object", Bucket=side.bucket(), Key=side.key("files/abc.webp"))
    side.call("get", "get_object", Bucket=side.bucket(), Key=side.key("files/abc.webp"))
    side.call("ranged get", "get_object", Bucket=side.bucket(), Key=side.key("files/abc.webp"), Range="bytes=5-9")
    side.call("list", "list_objects_v2", Bucket=side.bucket(), Prefix=side.key("files/"))
    side.call("delete", "delete_object", Bucket=side.bucket(), Key=side.key("files/abc.webp"))
    side.call("get deleted", "get_object", Bucket=side.bucket(), Key=side.key("files/abc.webp"))


ODD_KEYS = ("sp ace", "ünï/çödé", "plus+sign", "pct%41", "q?mark", "hash#tag", "a//double/", "tilde~", "semi;colon",
            "amp&er=eq", "quote'and\"", "<angle>", "trailing ", "日本語/キー")


@case("PutObject", "GetObject", "HeadObject", "CopyObject", "DeleteObject", "ListObjectsV2", "DeleteObjects")
def case_odd_keys(side: Side) -> None:
    """Keys that need encoding in the path, in the copy source and in XML."""
    for key in ODD_KEYS:
        _put(side, key, body=key.encode())
        side.call(f"get {key}", "get_object", Bucket=side.bucket(), Key=side.key(key), keep=("Body", "status"))
        side.call(f"head {key}", "head_object", Bucket=side.bucket(), Key=side.key(key),
                  keep=("ContentLength", "status"))
        side.call(f"copy {key}", "copy_object", Bucket=side.bucket(), Key=side.key(key + ".copy"),
                  CopySource={"Bucket": side.bucket(), "Key": side.key(key)}, keep=("status",))
    side.call("list", "list_objects_v2", Bucket=side.bucket(), Prefix=side.key(""), keep=("Contents", "KeyCount"))
    for key in ODD_KEYS[:7]:
        side.call(f"delete {key}", "delete_object", Bucket=side.bucket(), Key=side.key(key))
    deleted = side.call("delete the copies", "delete_objects", Bucket=side.bucket(), keep=("Errors",),
                        Delete={"Objects": [{"Key": side.key(key + ".copy")} for key in ODD_KEYS]})
    if deleted is not None:
        side.note("deleted copies", sorted(item["Key"] for item in deleted.get("Deleted", [])))
    side.call("left", "list_objects_v2", Bucket=side.bucket(), Prefix=side.key(""), keep=("Contents", "KeyCount"))


@case("PutObject", "GetObject", "HeadObject", "CopyObject", "DeleteObject", "DeleteObjects", mode="mapped")
def case_odd_keys_mapped(side: Side) -> None:
    """The same keys through the bucket map (the key is unchanged, the bucket renamed, the copy source too)."""
    case_odd_keys(side)


@case("PutObject", "HeadObject", "GetObjectAcl", "CopyObject")
def case_put_headers_kept(side: Side) -> None:
    """The object headers a writer may set are stored as the upstream stores them (never dropped on the way)."""
    _put(side, "h", ContentType="image/avif", ContentLanguage="de", ContentDisposition="attachment",
         CacheControl="no-store", Expires=datetime.datetime(2031, 1, 2, tzinfo=datetime.UTC), ACL="public-read",
         ServerSideEncryption="AES256", StorageClass="STANDARD_IA", Metadata={"a": "1", "b-c": "two words"})
    side.call("head", "head_object", Bucket=side.bucket(), Key=side.key("h"))
    acl = side.call("acl", "get_object_acl", Bucket=side.bucket(), Key=side.key("h"), keep=("status",))
    if acl is not None:
        side.note("grants", sorted((g["Grantee"].get("URI", "owner"), g["Permission"]) for g in acl["Grants"]))
    side.call("copy keeps them", "copy_object", Bucket=side.bucket(), Key=side.key("h2"),
              CopySource={"Bucket": side.bucket(), "Key": side.key("h")}, keep=("status",))
    side.call("head copy", "head_object", Bucket=side.bucket(), Key=side.key("h2"))


@case("CopyObject", "GetObjectTagging", "GetObjectAcl", "PutObject", buckets=("a", "b"))
def case_copy_tags_and_acl(side: Side) -> None:
    """Tags are copied by default (x-amz-tagging-directive COPY) or replaced; a canned ACL on the copy applies."""
    _put(side, "tagged", Tagging="kind=photo")
    source = {"Bucket": side.bucket(), "Key": side.key("tagged")}
    side.call("copy, tags copied", "copy_object", Bucket=side.bucket("b"), Key=side.key("t1"), CopySource=source,
              keep=("status",))
    side.call("tags of t1", "get_object_tagging", Bucket=side.bucket("b"), Key=side.key("t1"))
    side.call("copy, tags replaced", "copy_object", Bucket=side.bucket("b"), Key=side.key("t2"), CopySource=source,
              TaggingDirective="REPLACE", Tagging="state=copied", ACL="public-read", keep=("status",))
    side.call("tags of t2", "get_object_tagging", Bucket=side.bucket("b"), Key=side.key("t2"))
    acl = side.call("acl of t2", "get_object_acl", Bucket=side.bucket("b"), Key=side.key("t2"), keep=("status",))
    if acl is not None:
        side.note("grants of t2", sorted((g["Grantee"].get("URI", "owner"), g["Permission"]) for g in acl["Grants"]))


@case("PutObject", "GetObject", "CopyObject", "ListObjectsV2", buckets=("a", "new"))
def case_limits_and_odd_arguments(side: Side) -> None:
    """S3's limits and argument errors: key length, metadata size, max-keys edges, ranges on an empty object,
    a copy from a missing bucket, a bad metadata directive."""
    longest = "k" * 1024
    side.call("key of 1,024 bytes", "put_object", Bucket=side.bucket(), Key=longest, Body=b"x", keep=("status",))
    side.call("get it", "get_object", Bucket=side.bucket(), Key=longest, keep=("Body", "status"))
    side.raw("key of 1,025 bytes", "PUT", side.bucket(), "k" * 1025, body=b"x",
             unless={"moto": "moto stores a key over 1,024 bytes",
                     "rgw": "Ceph 16 answers InvalidObjectName (S3: KeyTooLongError)"})
    side.raw("metadata over 2 KB", "PUT", side.bucket(), side.key("meta"), body=b"x",
             headers={"x-amz-meta-big": "m" * 2100})
    side.call("metadata not stored", "head_object", Bucket=side.bucket(), Key=side.key("meta"))
    side.call("max-keys 0", "list_objects_v2", Bucket=side.bucket(), MaxKeys=0)
    side.raw("max-keys -1", "GET", side.bucket(), query="list-type=2&max-keys=-1")
    side.raw("max-keys not a number", "GET", side.bucket(), query="list-type=2&max-keys=many",
             unless={"moto": "moto answers a non-numeric max-keys with a 500"})
    side.call("put empty", "put_object", Bucket=side.bucket(), Key=side.key("empty"), Body=b"", keep=("status",))
    side.call("range on an empty object", "get_object", Bucket=side.bucket(), Key=side.key("empty"),
              Range="bytes=0-9")
    side.call("copy from a missing bucket", "copy_object", Bucket=side.bucket(), Key=side.key("c"),
              CopySource={"Bucket": side.bucket("new"), "Key": "k"})
    side.raw("bad metadata directive", "PUT", side.bucket(), side.key("c2"),
             headers={"x-amz-copy-source": f"{side.bucket()}/{longest}", "x-amz-metadata-directive": "MERGE"},
             unless={"moto": "moto copies with an unknown metadata directive"})
