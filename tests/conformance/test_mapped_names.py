"""The mapped mode (pict-rs deployments): clients see only the configured names. ListBuckets lists `pictrs`
(never the real bucket nor any other upstream bucket), the real name is not served, and CreateBucket of the
served name answers as S3 answers the bucket's owner (200 in us-east-1, BucketAlreadyOwnedByYou elsewhere)."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

from tests.conformance.conftest import UPSTREAM_FIXTURES
from tests.support.proxy import CLIENT_BUCKET, CLIENTS

KEY = "rclone-key"


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_mapped_names(kind: str, request: pytest.FixtureRequest, conformance_proxies) -> None:
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "mapped")
    s3 = proxy.client(KEY, CLIENTS[KEY])
    upstream.client().create_bucket(Bucket=f"cf-unserved-{uuid.uuid4().hex[:12]}")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [CLIENT_BUCKET]
    with pytest.raises(ClientError) as error:
        s3.list_objects_v2(Bucket=proxy.real_bucket)
    assert error.value.response["Error"]["Code"] == "NoSuchBucket"
    assert s3.create_bucket(Bucket=CLIENT_BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(ClientError) as error:
        s3.create_bucket(Bucket=CLIENT_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert error.value.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as error:
        s3.create_bucket(Bucket="cf-not-in-the-map")
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] in (403, 404, 409)
    assert "cf-not-in-the-map" not in [b["Name"] for b in upstream.client().list_buckets()["Buckets"]]
