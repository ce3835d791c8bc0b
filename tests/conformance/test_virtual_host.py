"""Virtual-hosted-style requests (`{bucket}.localhost`, the configured base domain) reach the same objects as
path-style ones, and do not open a way around what path-style refuses (the quarantine bucket)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conformance.conftest import UPSTREAM_FIXTURES, make_sides, quarantine_bucket
from tests.conformance.harness import error_code


def virtual(side, bucket: str, path: str, method: str = "GET", body: bytes = b"") -> httpx.Response:
    """A signed request for `{bucket}.localhost:{port}{path}`, sent to the proxy's loopback address."""
    port = side.endpoint.rsplit(":", 1)[1]
    host = f"{bucket}.localhost:{port}"
    request = AWSRequest(method=method, url=f"http://{host}{path}", data=body,
                         headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(Credentials(side.access_key, side.secret_key), "s3", "us-east-1").add_auth(request)
    headers = {**dict(request.headers.items()), "Host": host}
    return httpx.request(method, f"{side.endpoint}{path}", headers=headers, content=body)


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_virtual_host_addressing(kind: str, request: pytest.FixtureRequest, conformance_proxies) -> None:
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "guarded")
    _, side = make_sides(kind, "guarded", upstream, proxy, ("a",))
    bucket = side.bucket()
    side.s3.put_object(Bucket=bucket, Key="dir/photo one.jpg", Body=b"photo bytes")
    got = virtual(side, bucket, "/dir/photo%20one.jpg")
    assert (got.status_code, got.content) == (200, b"photo bytes")
    put = virtual(side, bucket, "/dir/second.jpg", "PUT", b"second bytes")
    assert put.status_code == 200, put.text
    assert upstream.get(bucket, "dir/second.jpg") == b"second bytes"
    listing = virtual(side, bucket, "/?list-type=2&prefix=dir%2F")
    assert listing.status_code == 200 and b"<Key>dir/second.jpg</Key>" in listing.content

    hidden = quarantine_bucket(kind)
    secret = b"quarantined bytes 7f3a"
    upstream.client().put_object(Bucket=hidden, Key="items/evidence.jpg", Body=secret)
    for method, path, body in (("GET", "/items/evidence.jpg", b""), ("GET", "/?list-type=2", b""),
                               ("PUT", "/items/evidence.jpg", b"overwritten"), ("DELETE", "/items/evidence.jpg", b"")):
        answer = virtual(side, hidden, path, method, body)
        assert answer.status_code in (403, 404) and secret not in answer.content, (method, path, answer.text)
        assert error_code(answer) in ("AccessDenied", "NoSuchBucket"), (method, path, answer.text)
    assert upstream.get(hidden, "items/evidence.jpg") == secret
