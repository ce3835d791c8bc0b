"""Records say what really happened: a flag recorded for an upload whose upstream write then failed says the
object never landed (issue 9: a kill -9 of the upstream during PutObject left a "flag" for an object that was
never written). A real TCP relay in front of moto drops the PutObject, as a dying upstream would."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from tests.adversarial.relay import SlowRelay
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, RunningProxy, new_bucket, start_subprocess, write_config


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def flagging_proxy(moto_server: S3Server, tmp_path: Path) -> Iterator[tuple[RunningProxy, SlowRelay, str]]:
    relay = SlowRelay(int(moto_server.endpoint.rsplit(":", 1)[1]))
    bucket = new_bucket(moto_server)
    policy = tmp_path / "policy.toml"
    policy.write_text('on_non_media = "flag"\n')  # every upload of plain bytes lands, flagged for review
    config = write_config(tmp_path, S3Server(relay.endpoint), bucket, screening=f'policy = "{policy}"')
    proxy = start_subprocess(config, moto_server, bucket)
    try:
        yield proxy, relay, bucket
    finally:
        proxy.stop()
        relay.close()


def items(proxy: RunningProxy) -> dict[str, dict]:
    listed = cli("quarantine", "list", "--json", "--config", str(proxy.config_path))
    assert listed.returncode == 0, listed.stderr
    return {item["key"]: item for item in json.loads(listed.stdout)}


def test_a_flag_whose_write_failed_says_it_never_landed(flagging_proxy, moto_server: S3Server) -> None:
    proxy, relay, bucket = flagging_proxy
    s3 = proxy.client()
    s3.put_object(Bucket=CLIENT_BUCKET, Key="landed.txt", Body=b"plain text that lands", ContentType="text/plain")

    relay.drop_puts = True
    with pytest.raises((botocore.exceptions.ClientError, botocore.exceptions.ConnectionError)) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="lost.txt", Body=b"plain text that never lands",
                      ContentType="text/plain")
    relay.drop_puts = False
    if isinstance(info.value, botocore.exceptions.ClientError):
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500, "the server's failure, not 4xx"

    assert moto_server.keys(bucket) == ["landed.txt"]
    recorded = items(proxy)
    assert recorded["landed.txt"]["status"] == "flagged"
    assert recorded["lost.txt"]["status"] == "not-landed"
    verify = cli("evidence", "verify", "--config", str(proxy.config_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
