"""The proxy with boto3 in front and a real S3 server behind: pass-through, uploads, multipart, the seam."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import httpx
import pytest

from proxy.screening.upload import Upload, Verdict
from tests.support.proxy import CLIENT_BUCKET

MIB = 1024 * 1024


def error_code(info: pytest.ExceptionInfo) -> str:
    return info.value.response["Error"]["Code"]


def test_put_get_head_range_list_delete(proxy) -> None:
    s3 = proxy.client()
    data = os.urandom(300_000)
    key = "dir/ünïcode key+with%percent?.png"
    put = s3.put_object(Bucket=CLIENT_BUCKET, Key=key, Body=data, ContentType="image/png",
                        Metadata={"origin": "test"}, CacheControl="max-age=60")
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert proxy.upstream.get(proxy.real_bucket, key) == data

    got = s3.get_object(Bucket=CLIENT_BUCKET, Key=key)
    assert got["Body"].read() == data
    assert got["ContentType"] == "image/png"
    assert got["Metadata"] == {"origin": "test"}
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentLength"] == len(data)

    ranged = s3.get_object(Bucket=CLIENT_BUCKET, Key=key, Range="bytes=100-199")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 100-199/{len(data)}"
    assert ranged["Body"].read() == data[100:200]

    head = s3.head_object(Bucket=CLIENT_BUCKET, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == put["ETag"]

    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket=CLIENT_BUCKET, Key=key, IfNoneMatch=put["ETag"])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket=CLIENT_BUCKET, Key=key, IfMatch='"0000"')
    assert error_code(info) == "PreconditionFailed"

    listing = s3.list_objects_v2(Bucket=CLIENT_BUCKET, Prefix="dir/")
    assert listing["Name"] == CLIENT_BUCKET
    assert [o["Key"] for o in listing["Contents"]] == [key]

    s3.delete_object(Bucket=CLIENT_BUCKET, Key=key)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket=CLIENT_BUCKET, Key=key)
    assert error_code(info) == "NoSuchKey"
    s3.head_bucket(Bucket=CLIENT_BUCKET)


def test_unknown_bucket_and_internal_keys(proxy) -> None:
    s3 = proxy.client()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="not-served", Key="x")
    assert error_code(info) == "NoSuchBucket"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key=".bucketguard/staging/x", Body=b"x")
    assert error_code(info) == "AccessDenied"


def _multipart(s3, key: str, parts: list[bytes]) -> dict:
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key=key, ContentType="video/mp4")["UploadId"]
    numbered = list(enumerate(parts, start=1))

    def send(item):
        number, data = item
        return number, s3.upload_part(Bucket=CLIENT_BUCKET, Key=key, UploadId=upload_id, PartNumber=number,
                                      Body=data)["ETag"]

    with ThreadPoolExecutor(4) as pool:
        etags = dict(pool.map(send, reversed(numbered)))
    return s3.complete_multipart_upload(
        Bucket=CLIENT_BUCKET, Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n, _ in numbered]})


def test_multipart_out_of_order_with_empty_last_part(proxy) -> None:
    s3 = proxy.client()
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB + 123), b""]
    result = _multipart(s3, "video/big.mp4", parts)
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 200
    whole = b"".join(parts)
    assert proxy.upstream.get(proxy.real_bucket, "video/big.mp4") == whole
    assert s3.get_object(Bucket=CLIENT_BUCKET, Key="video/big.mp4")["ContentType"] == "video/mp4"
    assert proxy.upstream_keys() == ["video/big.mp4"], "no staging object may stay behind"
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []


def test_abort_leaves_nothing(proxy) -> None:
    s3 = proxy.client()
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="a.mp4")["UploadId"]
    s3.upload_part(Bucket=CLIENT_BUCKET, Key="a.mp4", UploadId=upload_id, PartNumber=1, Body=os.urandom(MIB))
    s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="a.mp4", UploadId=upload_id)
    assert proxy.upstream_keys() == []
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.upload_part(Bucket=CLIENT_BUCKET, Key="a.mp4", UploadId=upload_id, PartNumber=2, Body=b"x")
    assert error_code(info) == "NoSuchUpload"


def test_refusing_screen_holds_back_puts_and_multipart(proxy_factory) -> None:
    seen: list[tuple[str, int, str]] = []

    async def refuse(upload: Upload) -> Verdict:
        seen.append((upload.key, upload.size, upload.sha256))
        return Verdict("quarantine", rule="test-refusal")

    proxy = proxy_factory(screen=refuse)
    s3 = proxy.client()
    data = os.urandom(1000)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="flagged.png", Body=data)
    assert error_code(info) == "AccessDenied"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert seen == [("flagged.png", 1000, hashlib.sha256(data).hexdigest())]

    parts = [os.urandom(5 * MIB), os.urandom(1000)]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        _multipart(s3, "flagged.mp4", parts)
    assert error_code(info) == "AccessDenied"
    assert seen[-1] == ("flagged.mp4", len(b"".join(parts)), hashlib.sha256(b"".join(parts)).hexdigest())
    assert proxy.upstream_keys() == []
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []

    # No key gets past the screen by its name: pict-rs's empty health-check object is screened like any upload
    # (the real pipeline's EmptyObject step lets it land: test_empty_health_check_lands_through_a_strict_pipeline).
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="health-check", Body=b"")
    assert error_code(info) == "AccessDenied"
    assert seen[-1] == ("health-check", 0, hashlib.sha256(b"").hexdigest())
    assert proxy.upstream_keys() == []


def test_refuse_verdict_is_slowdown(proxy_factory) -> None:
    async def unavailable(upload: Upload) -> Verdict:
        return Verdict("refuse")

    proxy = proxy_factory(screen=unavailable)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="later.png", Body=b"123")
    assert error_code(info) == "SlowDown"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.upstream_keys() == []


def test_empty_health_check_lands_through_a_strict_pipeline(moto_server, tmp_path) -> None:
    """pict-rs 0.5.17+ PUTs an empty `health-check` object on every /healthz: the real screening pipeline, with
    a policy that keeps out every non-media byte and refuses whatever it cannot screen (no detectors here),
    lets zero bytes land under any key (its EmptyObject step), and nothing else, the same name included."""
    from proxy.app import build_app
    from proxy.config import load_config
    from proxy.demo.pictrs_client import PictrsClient
    from tests.support.proxy import CLIENTS, PICTRS_KEY, new_bucket, start_in_process, write_config

    policy = tmp_path / "policy.toml"
    policy.write_text('on_non_media = "reject"\non_undecodable = "reject"\non_unavailable = "refuse"\n')
    bucket = new_bucket(moto_server)
    path = write_config(tmp_path, moto_server, bucket, screening=f'policy = "{policy}"')
    config = load_config(path)
    running = start_in_process(config, moto_server, bucket, path, app=build_app(config))
    try:
        for generation in ("header", "presigned"):
            PictrsClient(running.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], generation=generation,
                         path_style=True).health_check()
        assert moto_server.keys(bucket) == ["health-check"]
        assert moto_server.get(bucket, "health-check") == b""
        s3 = running.client()
        s3.put_object(Bucket=CLIENT_BUCKET, Key="any/empty.bin", Body=b"")
        for key, data in (("health-check", b"not empty"), ("note.txt", b"plain text")):
            with pytest.raises(botocore.exceptions.ClientError) as info:
                s3.put_object(Bucket=CLIENT_BUCKET, Key=key, Body=data)
            assert error_code(info) == "AccessDenied"
        assert moto_server.keys(bucket) == ["any/empty.bin", "health-check"]
        assert moto_server.get(bucket, "health-check") == b""
    finally:
        running.stop()


def test_health_ready_metrics(proxy) -> None:
    assert httpx.get(f"{proxy.endpoint}/healthz").status_code == 200
    assert httpx.get(f"{proxy.endpoint}/readyz").status_code == 200
    proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="m.png", Body=b"abc")
    text = httpx.get(f"{proxy.endpoint}/metrics").text
    assert 'bucketguard_requests_total{operation="PutObject",status="200"} 1.0' in text
    assert 'bucketguard_uploads_screened_total{action="allow"} 1.0' in text
    assert "bucketguard_request_seconds_bucket" in text


def test_proxy_path_names_are_no_buckets_for_s3_clients(proxy) -> None:
    """With a bucket map, the proxy's path names are refused as bucket names: a signed S3 request to one of them
    is answered as S3 answers an unknown bucket (XML, which boto3 parses), never with the endpoint's own page;
    the endpoints still answer requests without S3 authentication."""
    s3 = proxy.client()
    for name in ("metrics", "healthz", "readyz", "admin", "validate", "federation"):
        for operation, params in (("get_object", {"Key": "x"}), ("list_objects_v2", {}),
                                  ("put_object", {"Key": "x", "Body": b"1"})):
            with pytest.raises(botocore.exceptions.ClientError) as info:
                getattr(s3, operation)(Bucket=name, **params)
            assert error_code(info) == "NoSuchBucket", name
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        url = s3.generate_presigned_url("get_object", Params={"Bucket": name, "Key": "x"})
        answer = httpx.get(url)
        assert answer.status_code == 404 and b"<Code>NoSuchBucket</Code>" in answer.content, name
    assert proxy.upstream_keys() == []
    assert httpx.get(f"{proxy.endpoint}/metrics").text.startswith("#")
    assert httpx.get(f"{proxy.endpoint}/healthz").text == "ok\n"


def test_failed_upstream_write_is_reported_for_the_record(moto_server, tmp_path) -> None:
    """The upstream drops the PUT (a real TCP relay in front of moto that cuts PUT connections): the client
    gets a 5xx, nothing lands, and the front tells `on_write_failed` (what the screen recorded as a flag
    must say the object never landed); `on_landed` is never told."""
    from proxy.config import load_config
    from tests.adversarial.relay import SlowRelay
    from tests.support.moto import S3Server
    from tests.support.proxy import new_bucket, start_in_process, write_config

    real_bucket = new_bucket(moto_server)
    relay = SlowRelay(int(moto_server.endpoint.rsplit(":", 1)[1]))
    relay.drop_puts = True
    upstream = S3Server(relay.endpoint)
    config_path = write_config(tmp_path, upstream, real_bucket, limits="janitor_interval_s = 0.0")

    async def flag(upload: Upload) -> Verdict:
        return Verdict("flag", rule="test-flag")

    running = start_in_process(load_config(config_path), moto_server, real_bucket, config_path, screen=flag)
    failed: list[tuple[str, str, str]] = []
    landed: list[str] = []

    async def on_write_failed(upload: Upload, verdict: Verdict, error: BaseException) -> None:
        failed.append((upload.key, upload.sha256, verdict.action))

    async def on_landed(upload: Upload) -> None:
        landed.append(upload.key)

    operations = running.app.state.bucketguard.operations
    operations.on_write_failed, operations.on_landed = on_write_failed, on_landed
    try:
        data = os.urandom(2000)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            running.client().put_object(Bucket=CLIENT_BUCKET, Key="flagged.bin", Body=data)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (500, 503)
        assert failed and set(failed) == {("flagged.bin", hashlib.sha256(data).hexdigest(), "flag")}  # per attempt
        assert landed == []
        assert moto_server.keys(real_bucket) == []
    finally:
        running.stop()
        relay.close()
