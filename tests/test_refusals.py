"""Refusals: each gets the S3 error S3 would give, and nothing lands upstream."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta

import botocore.auth
import botocore.exceptions
import httpx
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from defusedxml import ElementTree

from proxy.demo.pictrs_client import PictrsClient, PictrsError
from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY


class DeclaredHashAuth(S3SigV4Auth):
    """botocore's signer, signing a payload hash we choose instead of the body's."""

    def __init__(self, credentials: Credentials, region: str, declared: str | None) -> None:
        super().__init__(credentials, "s3", region)
        self.declared = declared

    def payload(self, request: AWSRequest) -> str:
        return self.declared or super().payload(request)


def xml_code(response: httpx.Response) -> str:
    return ElementTree.fromstring(response.content).findtext("Code") or ""


def signed_put(proxy, key: str, body: bytes, *, secret: str | None = None, declared_sha: str | None = None,
               access_key: str = PICTRS_KEY, region: str = "us-east-1") -> httpx.Response:
    url = f"{proxy.endpoint}/{CLIENT_BUCKET}/{key}"
    request = AWSRequest(method="PUT", url=url, data=body)
    credentials = Credentials(access_key, secret or CLIENTS.get(access_key, "unknown-secret"))
    DeclaredHashAuth(credentials, region, declared_sha).add_auth(request)
    return httpx.put(url, content=body, headers=dict(request.headers.items()))


def test_bad_signature(proxy) -> None:
    response = signed_put(proxy, "a.png", b"data", secret="wrong-secret")
    assert response.status_code == 403 and xml_code(response) == "SignatureDoesNotMatch"
    assert proxy.upstream_keys() == []


def test_unknown_access_key(proxy) -> None:
    response = signed_put(proxy, "a.png", b"data", access_key="nobody")
    assert response.status_code == 403 and xml_code(response) == "InvalidAccessKeyId"
    assert proxy.upstream_keys() == []


def test_body_not_matching_signed_hash(proxy) -> None:
    response = signed_put(proxy, "a.png", b"the real body", declared_sha=hashlib.sha256(b"declared").hexdigest())
    assert response.status_code == 400 and xml_code(response) == "XAmzContentSHA256Mismatch"
    assert proxy.upstream_keys() == []


def test_clock_skew(proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda: datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2))
    response = signed_put(proxy, "a.png", b"x")
    assert response.status_code == 403 and xml_code(response) == "RequestTimeTooSkewed"
    assert proxy.upstream_keys() == []


def test_wrong_region(proxy) -> None:
    response = signed_put(proxy, "a.png", b"x", region="garage")
    assert response.status_code == 400 and xml_code(response) == "AuthorizationHeaderMalformed"
    assert "region 'garage' is wrong; expecting 'us-east-1'" in response.text
    assert proxy.upstream_keys() == []


def test_expired_presigned_url(proxy) -> None:
    url = f"{proxy.endpoint}/{CLIENT_BUCKET}/late.png"
    request = AWSRequest(method="PUT", url=url, headers={"content-type": "image/png"})
    S3SigV4QueryAuth(Credentials(PICTRS_KEY, CLIENTS[PICTRS_KEY]), "s3", "us-east-1", expires=1).add_auth(request)
    time.sleep(2.1)
    response = httpx.put(request.url, content=b"png", headers={"content-type": "image/png"})
    assert response.status_code == 403 and xml_code(response) == "AccessDenied"
    assert "expired" in response.text
    assert proxy.upstream_keys() == []


def test_tampered_presigned_url(proxy) -> None:
    url = f"{proxy.endpoint}/{CLIENT_BUCKET}/a.png"
    request = AWSRequest(method="GET", url=url)
    S3SigV4QueryAuth(Credentials(PICTRS_KEY, CLIENTS[PICTRS_KEY]), "s3", "us-east-1", expires=60).add_auth(request)
    response = httpx.get(request.url.replace("/a.png", "/b.png"))
    assert response.status_code == 403 and xml_code(response) == "SignatureDoesNotMatch"


def test_anonymous_request(proxy) -> None:
    response = httpx.put(f"{proxy.endpoint}/{CLIENT_BUCKET}/a.png", content=b"x")
    assert response.status_code == 403 and xml_code(response) == "AccessDenied"
    assert proxy.upstream_keys() == []


def test_object_over_the_limit(proxy_factory) -> None:
    proxy = proxy_factory(limits="max_object_bytes = 100000")
    s3 = proxy.client()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="big.png", Body=os.urandom(100001))
    assert info.value.response["Error"]["Code"] == "EntityTooLarge"
    pictrs = PictrsClient(proxy.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], generation="presigned",
                          path_style=True)
    upload_id = pictrs.create_multipart("big.mp4", "video/mp4")
    with pytest.raises(PictrsError) as perr:
        pictrs.upload_part("big.mp4", upload_id, 1, os.urandom(100001))
    assert perr.value.code == "EntityTooLarge"
    pictrs.abort_multipart("big.mp4", upload_id)
    assert proxy.upstream_keys() == []
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []


def test_bad_content_md5(proxy) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="a.png", Body=b"abc",
                                  ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==")
    assert info.value.response["Error"]["Code"] == "BadDigest"
    assert proxy.upstream_keys() == []


def test_complete_with_wrong_etag_or_unknown_upload(proxy) -> None:
    s3 = proxy.client()
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="v.mp4")["UploadId"]
    s3.upload_part(Bucket=CLIENT_BUCKET, Key="v.mp4", UploadId=upload_id, PartNumber=1, Body=b"abc")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="v.mp4", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"ffff"'}]})
    assert info.value.response["Error"]["Code"] == "InvalidPart"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="v.mp4", UploadId="no-such-upload",
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"ffff"'}]})
    assert info.value.response["Error"]["Code"] == "NoSuchUpload"
    assert proxy.upstream_keys() == []


def test_malformed_complete_body(proxy) -> None:
    pictrs = PictrsClient(proxy.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], path_style=True)
    upload_id = pictrs.create_multipart("x.mp4", "video/mp4")
    entity_bomb = b'<!DOCTYPE a [<!ENTITY b "c">]><CompleteMultipartUpload>&b;</CompleteMultipartUpload>'
    response = pictrs._send("POST", "x.mp4", query=f"uploadId={upload_id}", body=entity_bomb)
    assert response.status_code == 400 and xml_code(response) == "MalformedXML"
