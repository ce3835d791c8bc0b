"""S3's limits where both upstreams are wrong (moto stores what S3 refuses, Ceph 16 answers other codes), so
the proxy is held to S3's documented answers directly: a key over 1,024 bytes is KeyTooLongError, a part
number outside 1..10,000 is InvalidArgument, and nothing of either reaches the upstream."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.conformance.conftest import UPSTREAM_FIXTURES, make_sides
from tests.conformance.harness import error_code, xml_values


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_key_length_and_part_numbers(kind: str, request: pytest.FixtureRequest, conformance_proxies) -> None:
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "passthrough")
    _, side = make_sides(kind, "passthrough", upstream, proxy, ("a",))
    bucket, s3 = side.bucket(), side.s3
    response = side.send("PUT", side.url(bucket, "k" * 1025), body=b"x")
    assert (response.status_code, error_code(response)) == (400, "KeyTooLongError")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="parts")["UploadId"]
    for number in (0, 10001):
        with pytest.raises(ClientError) as error:
            s3.upload_part(Bucket=bucket, Key="parts", UploadId=upload, PartNumber=number, Body=b"p")
        assert error.value.response["Error"]["Code"] == "InvalidArgument", number
    assert s3.list_parts(Bucket=bucket, Key="parts", UploadId=upload).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=bucket, Key="parts", UploadId=upload)
    direct = upstream.client()
    assert direct.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_list_multipart_uploads_key_marker_and_encoding(kind: str, request: pytest.FixtureRequest,
                                                        conformance_proxies) -> None:
    """Both upstreams ignore key-marker (and moto encoding-type): the proxy answers from its own state as S3."""
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "passthrough")
    _, side = make_sides(kind, "passthrough", upstream, proxy, ("a",))
    bucket, s3 = side.bucket(), side.s3
    uploads = {key: s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"] for key in ("u/one", "u/t o", "w")}
    after = s3.list_multipart_uploads(Bucket=bucket, KeyMarker="u/one")
    assert [u["Key"] for u in after["Uploads"]] == ["u/t o", "w"]
    response = side.send("GET", side.url(bucket, query="uploads&encoding-type=url"))
    assert xml_values(response.content, "EncodingType") == ["url"]
    assert xml_values(response.content, "Key") == ["u/one", "u/t%20o", "w"]
    for key, upload in uploads.items():
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
