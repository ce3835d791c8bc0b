"""Pass-through mode never serves the quarantine bucket, nor the proxy's internal keys: the attacks a client
holding valid proxy keys could try, judged by what the real upstream holds afterwards."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.conformance.conftest import UPSTREAM_FIXTURES, make_sides, quarantine_bucket

EVIDENCE = b"quarantined evidence bytes"


def _refused(attempt) -> str:
    """The S3 error code of a call that must fail."""
    with pytest.raises(ClientError) as error:
        attempt()
    return error.value.response["Error"]["Code"] or str(error.value.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_quarantine_bucket_is_invisible_and_untouchable(kind: str, request: pytest.FixtureRequest,
                                                        conformance_proxies) -> None:
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "guarded")
    hidden = quarantine_bucket(kind)
    direct = upstream.client()
    direct.put_object(Bucket=hidden, Key="items/evidence.jpg", Body=EVIDENCE)
    _, side = make_sides(kind, "guarded", upstream, proxy, ("a",))
    s3, mine = side.s3, side.bucket()
    s3.put_object(Bucket=mine, Key="own.jpg", Body=b"own")

    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert mine in names and hidden not in names
    assert hidden in [b["Name"] for b in direct.list_buckets()["Buckets"]]  # it is there, only not served
    attempts = {
        "GetObject": lambda: s3.get_object(Bucket=hidden, Key="items/evidence.jpg"),
        "HeadObject": lambda: s3.head_object(Bucket=hidden, Key="items/evidence.jpg"),
        "ListObjectsV2": lambda: s3.list_objects_v2(Bucket=hidden),
        "ListObjects": lambda: s3.list_objects(Bucket=hidden),
        "ListObjectVersions": lambda: s3.list_object_versions(Bucket=hidden),
        "HeadBucket": lambda: s3.head_bucket(Bucket=hidden),
        "PutObject": lambda: s3.put_object(Bucket=hidden, Key="items/evidence.jpg", Body=b"overwritten"),
        "DeleteObject": lambda: s3.delete_object(Bucket=hidden, Key="items/evidence.jpg"),
        "DeleteObjects": lambda: s3.delete_objects(Bucket=hidden, Delete={"Objects": [{"Key": "items/evidence.jpg"}]}),
        "DeleteBucket": lambda: s3.delete_bucket(Bucket=hidden),
        "CreateBucket": lambda: s3.create_bucket(Bucket=hidden),
        "GetBucketAcl": lambda: s3.get_bucket_acl(Bucket=hidden),
        "GetObjectAcl": lambda: s3.get_object_acl(Bucket=hidden, Key="items/evidence.jpg"),
        "PutObjectTagging": lambda: s3.put_object_tagging(Bucket=hidden, Key="items/evidence.jpg",
                                                          Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}),
        "CreateMultipartUpload": lambda: s3.create_multipart_upload(Bucket=hidden, Key="items/new.jpg"),
        "CopyObject out": lambda: s3.copy_object(Bucket=mine, Key="stolen.jpg",
                                                 CopySource={"Bucket": hidden, "Key": "items/evidence.jpg"}),
        "CopyObject in": lambda: s3.copy_object(Bucket=hidden, Key="items/evidence.jpg",
                                                CopySource={"Bucket": mine, "Key": "own.jpg"}),
    }
    codes = {name: _refused(attempt) for name, attempt in attempts.items()}
    assert all(code in ("AccessDenied", "NoSuchBucket", "403", "404") for code in codes.values()), codes
    upload = s3.create_multipart_upload(Bucket=mine, Key="assembled.jpg")["UploadId"]
    codes["UploadPartCopy"] = _refused(lambda: s3.upload_part_copy(
        Bucket=mine, Key="assembled.jpg", UploadId=upload, PartNumber=1,
        CopySource={"Bucket": hidden, "Key": "items/evidence.jpg"}))
    assert codes["UploadPartCopy"] in ("AccessDenied", "NoSuchBucket"), codes
    s3.abort_multipart_upload(Bucket=mine, Key="assembled.jpg", UploadId=upload)

    # Spellings of the same name that a careless comparison would miss.
    encoded = hidden.replace("-", "%2D")
    for label, method, url, headers in (
        ("GET, encoded bucket", "GET", f"{side.endpoint}/{encoded}/items/evidence.jpg", {}),
        ("GET, encoded slash", "GET", f"{side.endpoint}/{hidden}/items%2Fevidence.jpg", {}),
        ("copy, leading slash", "PUT", side.url(mine, "stolen2.jpg"),
         {"x-amz-copy-source": f"/{hidden}/items/evidence.jpg"}),
        ("copy, encoded source", "PUT", side.url(mine, "stolen3.jpg"),
         {"x-amz-copy-source": f"{encoded}/items%2Fevidence.jpg"}),
        ("copy, ARN-like source", "PUT", side.url(mine, "stolen4.jpg"),
         {"x-amz-copy-source": f"{hidden}/items/evidence.jpg?versionId=null"}),
    ):
        response = side.send(method, url, headers)
        assert response.status_code in (400, 403, 404), (label, response.status_code, response.text[:300])
        assert EVIDENCE not in response.content, label

    # The real upstream: the evidence is intact and alone; nothing was copied out.
    assert direct.get_object(Bucket=hidden, Key="items/evidence.jpg")["Body"].read() == EVIDENCE
    assert [o["Key"] for o in direct.list_objects_v2(Bucket=hidden)["Contents"]] == ["items/evidence.jpg"]
    assert direct.get_object_tagging(Bucket=hidden, Key="items/evidence.jpg")["TagSet"] == []
    assert direct.list_multipart_uploads(Bucket=hidden).get("Uploads", []) == []
    assert [o["Key"] for o in direct.list_objects_v2(Bucket=mine)["Contents"]] == ["own.jpg"]


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_internal_keys_are_not_served(kind: str, request: pytest.FixtureRequest, conformance_proxies) -> None:
    """The proxy's staging prefix inside a served bucket is refused for reads, writes and copies."""
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "passthrough")
    _, side = make_sides(kind, "passthrough", upstream, proxy, ("a",))
    s3, mine, direct = side.s3, side.bucket(), upstream.client()
    internal = ".bucketguard/staging/planted"
    direct.put_object(Bucket=mine, Key=internal, Body=b"staged, unscreened")
    s3.put_object(Bucket=mine, Key="own", Body=b"own")
    # Listings never show the staging prefix (a sync tool would try to copy it).
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=mine)["Contents"]] == ["own"]
    assert [o["Key"] for o in s3.list_objects(Bucket=mine)["Contents"]] == ["own"]
    assert [v["Key"] for v in s3.list_object_versions(Bucket=mine)["Versions"]] == ["own"]
    assert s3.list_objects_v2(Bucket=mine, Delimiter="/").get("CommonPrefixes", []) == []
    codes = {
        "GetObject": _refused(lambda: s3.get_object(Bucket=mine, Key=internal)),
        "PutObject": _refused(lambda: s3.put_object(Bucket=mine, Key=internal, Body=b"x")),
        "DeleteObject": _refused(lambda: s3.delete_object(Bucket=mine, Key=internal)),
        "CopyObject": _refused(lambda: s3.copy_object(Bucket=mine, Key="out", CopySource={"Bucket": mine,
                                                                                        "Key": internal})),
        "CopyObject onto": _refused(lambda: s3.copy_object(Bucket=mine, Key=internal, CopySource={"Bucket": mine,
                                                                                                "Key": "own"})),
        "CreateMultipartUpload": _refused(lambda: s3.create_multipart_upload(Bucket=mine, Key=internal)),
        "PutObjectTagging": _refused(lambda: s3.put_object_tagging(Bucket=mine, Key=internal,
                                                                   Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})),
    }
    assert set(codes.values()) <= {"AccessDenied", "403"}, codes
    # One batch naming the internal key among ordinary ones: the internal one is never deleted.
    answer = s3.delete_objects(Bucket=mine, Delete={"Objects": [{"Key": "own"}, {"Key": internal}]})
    assert internal not in [d["Key"] for d in answer.get("Deleted", [])], answer
    assert direct.get_object(Bucket=mine, Key=internal)["Body"].read() == b"staged, unscreened"
    assert direct.get_object_tagging(Bucket=mine, Key=internal)["TagSet"] == []
    assert [o["Key"] for o in direct.list_objects_v2(Bucket=mine)["Contents"]] == [internal]
    assert direct.list_multipart_uploads(Bucket=mine).get("Uploads", []) == []
