"""Where the proxy differs from its upstream on purpose: a sub-resource it does not implement is 501
NotImplemented as S3 XML, and never reaches the object (judged by the bytes in the upstream bucket)."""

from __future__ import annotations

import pytest

from tests.conformance.conftest import UPSTREAM_FIXTURES, make_sides
from tests.conformance.harness import error_code

#: (method, on the object?, query) an attacker or a newer client might send.
REQUESTS = [
    ("PUT", True, "website"), ("PUT", True, "retention"), ("PUT", True, "legal-hold"), ("POST", True, "restore"),
    ("PUT", True, "torrent"), ("GET", True, "torrent"), ("PUT", False, "policy"), ("PUT", False, "cors"),
    ("GET", False, "cors"), ("DELETE", False, "lifecycle"), ("PUT", True, "acl&website"), ("PUT", True, "select"),
    ("POST", True, "select&select-type=2"), ("PUT", False, "versioning"), ("PUT", False, "notification"),
]


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_unknown_subresources_are_501_and_leave_the_object_alone(kind: str, request: pytest.FixtureRequest,
                                                                 conformance_proxies) -> None:
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "passthrough")
    _, side = make_sides(kind, "passthrough", upstream, proxy, ("a",))
    bucket = side.bucket()
    original = b"original object bytes"
    side.s3.put_object(Bucket=bucket, Key="victim", Body=original)
    answers = {}
    for method, on_object, query in REQUESTS:
        response = side.send(method, side.url(bucket, "victim" if on_object else None, query),
                             body=b"<overwrite>attacker bytes</overwrite>" if method in ("PUT", "POST") else b"")
        answers[f"{method} {query}"] = (response.status_code, error_code(response))
    # A browser-form upload (POST on the bucket) would land bytes without the proxy's screening: refused too.
    form = (b'--x\r\nContent-Disposition: form-data; name="key"\r\n\r\nvictim\r\n--x\r\n'
            b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nform bytes\r\n--x--\r\n')
    response = side.send("POST", side.url(bucket), {"content-type": "multipart/form-data; boundary=x"}, form)
    answers["POST form upload"] = (response.status_code, error_code(response))
    assert answers == {label: (501, "NotImplemented") for label in answers}
    direct = upstream.client()
    assert direct.get_object(Bucket=bucket, Key="victim")["Body"].read() == original
    assert [o["Key"] for o in direct.list_objects_v2(Bucket=bucket).get("Contents", [])] == ["victim"]
