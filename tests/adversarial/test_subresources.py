"""Attacks with sub-resources: a request carrying one the proxy does not implement never reaches an object
operation; the ones it implements (acl, tagging) are forwarded and never touch the object's bytes.

Every test is judged by the real bucket on moto, listed directly (staging prefix included): the object's
bytes, and that no other key appeared.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.config import load_config
from tests.support.proxy import (
    CLIENT_BUCKET,
    CLIENTS,
    PICTRS_KEY,
    RunningProxy,
    new_bucket,
    start_in_process,
    write_config,
)

ORIGINAL = b"\x89PNG original bytes that must survive every attack" * 10
ACL_BODY = (b'<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>x</ID></Owner>'
            b"<AccessControlList/></AccessControlPolicy>")
TAGGING_BODY = b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>"


def send(endpoint: str, method: str, path: str, query: str = "", body: bytes = b"",
         headers: dict[str, str] | None = None) -> httpx.Response:
    """A request signed exactly as an S3 client signs it, with any query an attacker chooses."""
    url = f"{endpoint}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers={
        **(headers or {}), "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(Credentials(PICTRS_KEY, CLIENTS[PICTRS_KEY]), "s3", "us-east-1").add_auth(request)
    prepared = request.prepare()
    return httpx.request(method, prepared.url, headers=dict(prepared.headers), content=body or None, timeout=30)


@pytest.fixture(scope="module")
def shared_proxy(moto_server, tmp_path_factory) -> Iterator[RunningProxy]:
    """One in-process proxy (allow-all screen) for the module: the attacks are independent requests."""
    real_bucket = new_bucket(moto_server)
    config_path = write_config(tmp_path_factory.mktemp("subresources"), moto_server, real_bucket)
    running = start_in_process(load_config(config_path), moto_server, real_bucket, config_path)
    yield running
    running.stop()


@pytest.fixture
def target(shared_proxy: RunningProxy) -> RunningProxy:
    """The bucket holding exactly victim.png with its original bytes (written directly on moto)."""
    upstream = shared_proxy.upstream.client()
    for key in shared_proxy.upstream.keys(shared_proxy.real_bucket):
        upstream.delete_object(Bucket=shared_proxy.real_bucket, Key=key)
    upstream.put_object(Bucket=shared_proxy.real_bucket, Key="victim.png", Body=ORIGINAL, ContentType="image/png")
    return shared_proxy


def _bucket_unchanged(proxy) -> None:
    """The real bucket, listed on moto itself: the one object, byte-exact, and nothing else (no staging key)."""
    assert proxy.upstream.keys(proxy.real_bucket) == ["victim.png"]
    assert proxy.upstream.get(proxy.real_bucket, "victim.png") == ORIGINAL
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []


@pytest.mark.parametrize(("method", "query", "body"), [
    ("PUT", "retention", b"<Retention><Mode>GOVERNANCE</Mode></Retention>"),
    ("PUT", "legal-hold", b"<LegalHold><Status>ON</Status></LegalHold>"),
    ("PUT", "torrent", b"overwrite"),
    ("PUT", "made-up-subresource", b"overwrite"),
    ("POST", "restore", b"<RestoreRequest><Days>1</Days></RestoreRequest>"),
    ("POST", "select&select-type=2", b"<SelectObjectContentRequest/>"),
    ("GET", "torrent", b""),
    ("GET", "made-up-subresource", b""),
    ("DELETE", "made-up-subresource", b""),
    ("PUT", "uploadId=forged", b"overwrite"),  # UploadPart without partNumber: not an object write
    ("POST", "", b"overwrite"),  # PostObject is not served
])
def test_unknown_subresource_is_501_and_touches_nothing(target, method: str, query: str, body: bytes) -> None:
    answer = send(target.endpoint, method, f"/{CLIENT_BUCKET}/victim.png", query, body)
    assert answer.status_code == 501, answer.text
    assert b"<Code>NotImplemented</Code>" in answer.content
    _bucket_unchanged(target)


@pytest.mark.parametrize(("method", "query"), [("PUT", "policy"), ("PUT", "website"), ("DELETE", "cors"),
                                               ("PUT", "lifecycle"), ("GET", "policy")])
def test_unknown_bucket_subresource_is_501(target, method: str, query: str) -> None:
    answer = send(target.endpoint, method, f"/{CLIENT_BUCKET}", query, b"<x/>" if method == "PUT" else b"")
    assert answer.status_code == 501
    assert b"<Code>NotImplemented</Code>" in answer.content
    _bucket_unchanged(target)


def test_put_acl_sets_the_acl_and_never_overwrites_the_object(target) -> None:
    answer = send(target.endpoint, "PUT", f"/{CLIENT_BUCKET}/victim.png", "acl", headers={"x-amz-acl": "private"})
    assert answer.status_code == 200, answer.text
    _bucket_unchanged(target)
    acl = target.client().get_object_acl(Bucket=CLIENT_BUCKET, Key="victim.png")
    assert acl["Grants"] and acl["Owner"]
    # An ACL document as the body: the upstream judges it; the object's bytes are never replaced by it.
    send(target.endpoint, "PUT", f"/{CLIENT_BUCKET}/victim.png", "acl", ACL_BODY)
    _bucket_unchanged(target)


def test_get_acl_answers_an_acl_not_the_bytes(target) -> None:
    answer = send(target.endpoint, "GET", f"/{CLIENT_BUCKET}/victim.png", "acl")
    assert answer.status_code == 200
    assert b"AccessControlPolicy" in answer.content and ORIGINAL not in answer.content
    _bucket_unchanged(target)


def test_tagging_is_forwarded_and_never_touches_the_bytes(target) -> None:
    answer = send(target.endpoint, "PUT", f"/{CLIENT_BUCKET}/victim.png", "tagging", TAGGING_BODY,
                  {"content-md5": base64.b64encode(hashlib.md5(TAGGING_BODY).digest()).decode()})
    assert answer.status_code == 200, answer.text
    _bucket_unchanged(target)
    direct = target.upstream.client().get_object_tagging(Bucket=target.real_bucket, Key="victim.png")
    assert direct["TagSet"] == [{"Key": "k", "Value": "v"}]
    got = send(target.endpoint, "GET", f"/{CLIENT_BUCKET}/victim.png", "tagging")
    assert got.status_code == 200 and b"<Key>k</Key>" in got.content and ORIGINAL not in got.content
    deleted = send(target.endpoint, "DELETE", f"/{CLIENT_BUCKET}/victim.png", "tagging")
    assert deleted.status_code == 204
    _bucket_unchanged(target)  # DELETE ?tagging deletes the tags, never the object
    assert target.upstream.client().get_object_tagging(Bucket=target.real_bucket, Key="victim.png")["TagSet"] == []


def test_subresources_on_internal_keys_are_refused(target) -> None:
    for method, query in (("GET", "acl"), ("PUT", "tagging"), ("GET", "attributes")):
        answer = send(target.endpoint, method, f"/{CLIENT_BUCKET}/.bucketguard/staging/x", query,
                      TAGGING_BODY if method == "PUT" else b"", {"x-amz-object-attributes": "ETag"})
        assert answer.status_code == 403
    _bucket_unchanged(target)
