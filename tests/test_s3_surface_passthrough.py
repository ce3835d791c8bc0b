"""Pass-through mode (`[upstream] buckets = "*"`), and the quarantine bucket unreachable through the S3 front
in every mode (pass-through, an empty map, a map naming it), judged by the buckets on moto themselves."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import httpx
import pytest

from proxy.config import load_config
from tests.support.proxy import RunningProxy, new_bucket, start_in_process, write_config

EVIDENCE = b"quarantined evidence bytes"


def _config(tmp: Path, moto_server, real_bucket: str, quarantine_bucket: str, buckets: str) -> Path:
    """The suite's config with `[upstream] buckets` replaced and the quarantine kept in an S3 bucket."""
    path = write_config(tmp, moto_server, real_bucket, extra=(
        f'store = "s3"\nbucket = "{quarantine_bucket}"\nendpoint = "{moto_server.endpoint}"\n'
        f'access_key = "{moto_server.access_key}"\nsecret_key = "{moto_server.secret_key}"\n'))
    text = re.sub(r"\[upstream\.buckets\]\n[^\n]*\n", "", path.read_text())
    text = text.replace('addressing = "path"\n', f'addressing = "path"\n{buckets}\n')
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def quarantine_bucket(moto_server) -> str:
    name = new_bucket(moto_server)
    moto_server.client().put_object(Bucket=name, Key="item-1", Body=EVIDENCE)
    return name


def _start(moto_server, tmp_path_factory, quarantine_bucket: str, buckets: str) -> RunningProxy:
    real_bucket = new_bucket(moto_server)
    path = _config(tmp_path_factory.mktemp("passthrough"), moto_server, real_bucket, quarantine_bucket, buckets)
    return start_in_process(load_config(path), moto_server, real_bucket, path)


@pytest.fixture(scope="module")
def passthrough(moto_server, tmp_path_factory, quarantine_bucket) -> Iterator[RunningProxy]:
    running = _start(moto_server, tmp_path_factory, quarantine_bucket, 'buckets = "*"')
    yield running
    running.stop()


def _evidence_intact(moto_server, quarantine_bucket: str) -> None:
    assert moto_server.keys(quarantine_bucket) == ["item-1"]
    assert moto_server.get(quarantine_bucket, "item-1") == EVIDENCE


def test_passthrough_serves_upstream_buckets_under_their_names(passthrough, moto_server, quarantine_bucket) -> None:
    s3 = passthrough.client()
    listed = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    upstream = {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    assert listed == upstream - {quarantine_bucket}
    s3.create_bucket(Bucket="made-through-proxy")
    assert "made-through-proxy" in {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    s3.put_object(Bucket="made-through-proxy", Key="k", Body=b"v")
    assert moto_server.get("made-through-proxy", "k") == b"v"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.delete_bucket(Bucket="made-through-proxy")
    assert info.value.response["Error"]["Code"] == "BucketNotEmpty"
    s3.delete_object(Bucket="made-through-proxy", Key="k")
    s3.delete_bucket(Bucket="made-through-proxy")
    assert "made-through-proxy" not in {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    s3.put_object(Bucket=passthrough.real_bucket, Key="own-name", Body=b"x")
    assert moto_server.get(passthrough.real_bucket, "own-name") == b"x"


def _attack(s3, quarantine_bucket: str, other_bucket: str) -> None:
    """Everything an S3 client could try on the quarantine bucket: each is refused."""
    attempts = [
        lambda: s3.list_objects_v2(Bucket=quarantine_bucket),
        lambda: s3.list_objects(Bucket=quarantine_bucket),
        lambda: s3.get_object(Bucket=quarantine_bucket, Key="item-1"),
        lambda: s3.head_object(Bucket=quarantine_bucket, Key="item-1"),
        lambda: s3.put_object(Bucket=quarantine_bucket, Key="item-1", Body=b"overwritten"),
        lambda: s3.delete_object(Bucket=quarantine_bucket, Key="item-1"),
        lambda: s3.delete_objects(Bucket=quarantine_bucket, Delete={"Objects": [{"Key": "item-1"}]}),
        lambda: s3.get_object_acl(Bucket=quarantine_bucket, Key="item-1"),
        lambda: s3.put_object_tagging(Bucket=quarantine_bucket, Key="item-1",
                                      Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}),
        lambda: s3.list_object_versions(Bucket=quarantine_bucket),
        lambda: s3.head_bucket(Bucket=quarantine_bucket),
        lambda: s3.delete_bucket(Bucket=quarantine_bucket),
        lambda: s3.create_bucket(Bucket=quarantine_bucket),
        lambda: s3.copy_object(Bucket=other_bucket, Key="stolen", CopySource=f"{quarantine_bucket}/item-1"),
        lambda: s3.create_multipart_upload(Bucket=quarantine_bucket, Key="item-1"),
    ]
    for attempt in attempts:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            attempt()
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (403, 404), (attempt, info.value)


def test_quarantine_bucket_unreachable_in_passthrough(passthrough, moto_server, quarantine_bucket) -> None:
    _attack(passthrough.client(), quarantine_bucket, passthrough.real_bucket)
    _evidence_intact(moto_server, quarantine_bucket)
    assert "stolen" not in moto_server.keys(passthrough.real_bucket)


@pytest.mark.parametrize("buckets", ["", '[upstream.buckets]\nevidence = "{q}"\npictrs = "{r}"'])
def test_quarantine_bucket_unreachable_with_any_map(moto_server, tmp_path_factory, quarantine_bucket,
                                                     buckets: str) -> None:
    real_bucket = new_bucket(moto_server)
    path = _config(tmp_path_factory.mktemp("mapped"), moto_server, real_bucket, quarantine_bucket,
                   buckets.format(q=quarantine_bucket, r=real_bucket))
    running = start_in_process(load_config(path), moto_server, real_bucket, path)
    try:
        s3 = running.client()
        client_name = "evidence" if buckets else quarantine_bucket
        other = "pictrs" if buckets else real_bucket
        _attack(s3, client_name, other)
        if not buckets:
            assert quarantine_bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
        else:
            assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["pictrs"]
    finally:
        running.stop()
    _evidence_intact(moto_server, quarantine_bucket)
    assert "stolen" not in moto_server.keys(real_bucket)


#: The proxy's own path-style endpoints that are also valid S3 bucket names.
PROXY_PATH_NAMES = ("healthz", "readyz", "metrics", "admin", "validate", "federation")


def test_buckets_named_like_proxy_paths_answer_s3(passthrough, moto_server) -> None:
    """In pass-through mode a bucket may be called `metrics` or `admin`: boto3 (path style, signed) gets S3
    for every one of them, as the buckets on moto show, while an unsigned GET of /healthz or /metrics is still
    the proxy's own endpoint."""
    s3 = passthrough.client()
    try:
        for name in PROXY_PATH_NAMES:
            s3.create_bucket(Bucket=name)
            s3.put_object(Bucket=name, Key="k.txt", Body=name.encode())
            assert moto_server.get(name, "k.txt") == name.encode()
            assert s3.get_object(Bucket=name, Key="k.txt")["Body"].read() == name.encode()
            assert s3.head_object(Bucket=name, Key="k.txt")["ContentLength"] == len(name)
            assert [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]] == ["k.txt"]
            s3.head_bucket(Bucket=name)
            url = s3.generate_presigned_url("get_object", Params={"Bucket": name, "Key": "k.txt"})
            assert httpx.get(url).content == name.encode()
            with pytest.raises(botocore.exceptions.ClientError) as missing:
                s3.get_object(Bucket=name, Key="missing")
            assert missing.value.response["Error"]["Code"] == "NoSuchKey"  # parsed from S3's XML error
        assert set(PROXY_PATH_NAMES) <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
        assert httpx.get(f"{passthrough.endpoint}/healthz").text == "ok\n"
        assert "bucketguard_requests_total" in httpx.get(f"{passthrough.endpoint}/metrics").text
    finally:
        for name in PROXY_PATH_NAMES:
            with contextlib.suppress(botocore.exceptions.ClientError):
                s3.delete_object(Bucket=name, Key="k.txt")
                s3.delete_bucket(Bucket=name)
    upstream = {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    assert not upstream & set(PROXY_PATH_NAMES), "deleted through the proxy"
