"""When the upstream refuses the proxy's own credentials, that is the server's fault, not the client's: the
client (whose key is right) gets a 5xx whose message names the upstream, never InvalidAccessKeyId or
SignatureDoesNotMatch as if its own key were wrong. Against both signature-checking upstreams."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from proxy.config import load_config
from tests.conformance.conftest import UPSTREAM_FIXTURES, passthrough_config
from tests.support.moto import S3Server
from tests.support.proxy import CLIENTS, RunningProxy, start_in_process

KEY = "rclone-key"


@pytest.fixture(params=list(UPSTREAM_FIXTURES))
def misconfigured(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[S3Server, RunningProxy]]:
    upstream: S3Server = request.getfixturevalue(UPSTREAM_FIXTURES[request.param])
    wrong = S3Server(upstream.endpoint, upstream.access_key, "not-the-upstream-secret")
    path = passthrough_config(tmp_path, wrong)
    proxy = start_in_process(load_config(path), wrong, "", path)
    yield upstream, proxy
    proxy.stop()


def test_client_is_not_blamed_for_the_proxys_upstream_key(misconfigured) -> None:
    upstream, proxy = misconfigured
    upstream.client().create_bucket(Bucket="cf-misconfigured")
    s3 = proxy.client(KEY, CLIENTS[KEY])
    for attempt in (lambda: s3.list_buckets(), lambda: s3.get_object(Bucket="cf-misconfigured", Key="k"),
                    lambda: s3.put_object(Bucket="cf-misconfigured", Key="k", Body=b"x")):
        with pytest.raises(ClientError) as error:
            attempt()
        answer = error.value.response
        assert answer["ResponseMetadata"]["HTTPStatusCode"] in (500, 503), answer
        assert answer["Error"]["Code"] not in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"), answer
        assert "upstream" in answer["Error"].get("Message", "").lower(), answer
    assert upstream.keys("cf-misconfigured") == []
