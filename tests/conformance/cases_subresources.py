"""Object sub-resources (tagging, ACL, attributes), presigned URLs and their expiry errors."""

from __future__ import annotations

import time

from tests.conformance.harness import Side, case, error_code


def _put(side: Side, key: str, body: bytes = b"tagged body", **params: object) -> dict | None:
    return side.call(f"put {key}", "put_object", Bucket=side.bucket(), Key=side.key(key), Body=body, **params)


@case("PutObjectTagging", "GetObjectTagging", "DeleteObjectTagging", "PutObject", "GetObject")
def case_tagging(side: Side) -> None:
    _put(side, "t", Tagging="kind=photo&size=small")
    side.call("get tagging set on put", "get_object_tagging", Bucket=side.bucket(), Key=side.key("t"))
    side.call("put tagging", "put_object_tagging", Bucket=side.bucket(), Key=side.key("t"),
              Tagging={"TagSet": [{"Key": "state", "Value": "reviewed"}]})
    side.call("get tagging", "get_object_tagging", Bucket=side.bucket(), Key=side.key("t"))
    side.call("bytes untouched", "get_object", Bucket=side.bucket(), Key=side.key("t"), keep=("Body", "status"))
    side.call("delete tagging", "delete_object_tagging", Bucket=side.bucket(), Key=side.key("t"))
    side.call("get tagging after delete", "get_object_tagging", Bucket=side.bucket(), Key=side.key("t"))
    side.call("object still there", "get_object", Bucket=side.bucket(), Key=side.key("t"), keep=("Body", "status"))
    side.call("tagging of a missing key", "get_object_tagging", Bucket=side.bucket(), Key=side.key("missing"))
    side.raw("malformed tagging XML", "PUT", side.bucket(), side.key("t"), query="tagging", body=b"<Tagging><Tag",
             unless={"moto": "moto answers malformed XML with a 500 HTML page"})


@case("GetObjectAcl", "PutObjectAcl", "PutObject", "GetObject")
def case_object_acl(side: Side) -> None:
    _put(side, "acl")
    acl = side.call("get acl", "get_object_acl", Bucket=side.bucket(), Key=side.key("acl"), keep=("status",))
    if acl is not None:
        side.note("grants", sorted(grant["Permission"] for grant in acl["Grants"]))
    side.call("put canned acl", "put_object_acl", Bucket=side.bucket(), Key=side.key("acl"), ACL="public-read")
    acl = side.call("get acl again", "get_object_acl", Bucket=side.bucket(), Key=side.key("acl"), keep=("status",))
    if acl is not None:
        side.note("grants after", sorted((grant["Grantee"].get("URI", "owner"), grant["Permission"])
                                         for grant in acl["Grants"]))
    side.call("bytes untouched by the ACL", "get_object", Bucket=side.bucket(), Key=side.key("acl"),
              keep=("Body", "ContentLength", "status"))
    side.call("acl of a missing key", "get_object_acl", Bucket=side.bucket(), Key=side.key("missing"))


@case("GetObjectAttributes", "PutObject", exclude={"rgw": "Ceph 16 has no GetObjectAttributes (answers 500)"})
def case_object_attributes(side: Side) -> None:
    _put(side, "attrs", body=b"x" * 1234)
    side.call("attributes", "get_object_attributes", Bucket=side.bucket(), Key=side.key("attrs"),
              ObjectAttributes=["ETag", "ObjectSize", "StorageClass"])
    side.call("attributes of a missing key", "get_object_attributes", Bucket=side.bucket(), Key=side.key("missing"),
              ObjectAttributes=["ETag"])


@case("GetObject", "PutObject", exclude={"moto": "moto's server with authentication on answers presigned URLs "
                                              "with a 500"})
def case_presigned_urls(side: Side) -> None:
    """boto3's default presigned URL (query-string SigV2 in us-east-1), then SigV4 ones and their expiry."""
    _put(side, "p")
    params = {"Bucket": side.bucket(), "Key": side.key("p")}
    v4 = side.client(signature_version="s3v4")

    def presigned(expires: int) -> str:
        return v4.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)

    def get(label: str, url: str) -> None:
        response = side.http.get(url)
        side.record(label, "GET presigned", {"status": response.status_code, "code": error_code(response),
                                             "body": response.content if response.status_code == 200 else b""})

    get("boto3 default (SigV2)", side.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=300))
    get("valid", presigned(300))
    expiring = presigned(1)
    if side.kind != "rgw":  # Ceph 16 accepts an X-Amz-Expires beyond seven days and a negative one
        get("more than seven days", presigned(604801))
        get("negative expiry", presigned(300).replace("X-Amz-Expires=300", "X-Amz-Expires=-5"))
    time.sleep(2.1)
    get("expired", expiring)

