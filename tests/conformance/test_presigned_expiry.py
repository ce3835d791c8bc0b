"""Presigned URLs' expiry as S3 answers it, where neither upstream can be the reference (moto's server does
not serve presigned URLs with authentication on; Ceph 16 accepts any X-Amz-Expires): a valid URL serves the
bytes, an expired one is 403 AccessDenied, one valid for more than seven days or for a negative time is 403
AuthorizationQueryParametersError; none of them writes anything."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conformance.conftest import UPSTREAM_FIXTURES, make_sides
from tests.conformance.harness import error_code


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_presigned_url_expiry(kind: str, request: pytest.FixtureRequest, conformance_proxies) -> None:
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, "passthrough")
    _, side = make_sides(kind, "passthrough", upstream, proxy, ("a",))
    side.s3.put_object(Bucket=side.bucket(), Key="p", Body=b"presigned bytes")
    v4 = side.client(signature_version="s3v4")

    def url(expires: int, method: str = "get_object") -> str:
        params = {"Bucket": side.bucket(), "Key": "p" if method == "get_object" else "written"}
        return v4.generate_presigned_url(method, Params=params, ExpiresIn=expires)

    def answer(response: httpx.Response) -> tuple[int, str | None]:
        return response.status_code, error_code(response)

    valid = httpx.get(url(300))
    assert (valid.status_code, valid.content) == (200, b"presigned bytes")
    expiring, expiring_put = url(1), url(1, "put_object")
    too_long = url(7 * 24 * 3600 + 1)
    negative = url(300).replace("X-Amz-Expires=300", "X-Amz-Expires=-5")
    assert answer(httpx.get(too_long)) == (403, "AuthorizationQueryParametersError")
    assert answer(httpx.get(negative)) == (403, "AuthorizationQueryParametersError")
    time.sleep(2.1)
    assert answer(httpx.get(expiring)) == (403, "AccessDenied")
    assert answer(httpx.put(expiring_put, content=b"late write")) == (403, "AccessDenied")
    assert [o["Key"] for o in upstream.client().list_objects_v2(Bucket=side.bucket())["Contents"]] == ["p"]
