"""Size limits and full disks: a size condition is never a 500, nothing over the limit lands, and a spool
that cannot be written answers 503 SlowDown (pict-rs retries) with nothing landed. Judged on moto."""

from __future__ import annotations

import hashlib
import io
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator

import botocore.exceptions
import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from PIL import Image

from tests.support.moto import free_port
from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY, RunningProxy, new_bucket, wait_healthy, write_config

MIB = 1024 * 1024


def _signed_headers(url: str, method: str, body: bytes) -> dict[str, str]:
    """Headers of a request signed over `body` (which the test then sends in pieces)."""
    request = AWSRequest(method=method, url=url, data=body, headers={
        "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(Credentials(PICTRS_KEY, CLIENTS[PICTRS_KEY]), "s3", "us-east-1").add_auth(request)
    return {**dict(request.prepare().headers), "content-length": str(len(body))}


def _race_two_parts(proxy, s3, upload_id: str) -> tuple[httpx.Response, dict]:
    """Part 1 held after its first MiB (sent raw with httpx) while part 2 is uploaded whole with boto3."""
    first = os.urandom(5 * MIB)
    url = f"{proxy.endpoint}/{CLIENT_BUCKET}/race/big.mp4?partNumber=1&uploadId={upload_id}"
    started, release = threading.Event(), threading.Event()
    answers: dict[str, httpx.Response] = {}

    def held_body() -> Iterator[bytes]:
        yield first[: MIB]
        started.set()
        release.wait(30)
        yield first[MIB:]

    def send_first() -> None:
        answers["first"] = httpx.put(url, content=held_body(), headers=_signed_headers(url, "PUT", first), timeout=60)

    sender = threading.Thread(target=send_first)
    sender.start()
    try:
        assert started.wait(30), "part 1's first MiB never went out"
        second = s3.upload_part(Bucket=CLIENT_BUCKET, Key="race/big.mp4", UploadId=upload_id, PartNumber=2,
                                Body=os.urandom(5 * MIB))
    finally:
        release.set()
        sender.join(60)
    return answers["first"], second


def test_parts_racing_past_the_limit_are_refused_at_complete(proxy_factory) -> None:
    """Part 1 is held half-sent while part 2 is uploaded whole: each passed the per-part check with the other
    not yet counted, so together they exceed the limit. Complete must answer EntityTooLarge (every time),
    never land the object, and Abort must clean the staging upload.

    Part 2 waits until part 1's first MiB has gone out; if the proxy still checked part 1 after part 2 was
    recorded (a loaded machine), part 1 itself is refused (the right answer, but no race): then again, at most
    five times, with a fresh upload."""
    proxy = proxy_factory(limits=f"max_object_bytes = {6 * MIB}")
    s3 = proxy.client()
    for _attempt in range(5):
        upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="race/big.mp4")["UploadId"]
        first, second = _race_two_parts(proxy, s3, upload_id)
        if first.status_code == 200:
            break
        assert (first.status_code, "<Code>EntityTooLarge</Code>" in first.text) == (400, True), first.text
        s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="race/big.mp4", UploadId=upload_id)
    assert first.status_code == 200, f"part 1 was never checked before part 2 landed: {first.text}"
    parts = {"Parts": [{"PartNumber": 1, "ETag": first.headers["etag"]}, {"PartNumber": 2, "ETag": second["ETag"]}]}
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="race/big.mp4", UploadId=upload_id,
                                         MultipartUpload=parts)
        assert (info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]) \
            == ("EntityTooLarge", 400)
    assert "race/big.mp4" not in proxy.upstream_keys()
    s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="race/big.mp4", UploadId=upload_id)
    assert proxy.upstream_keys() == []
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []


def test_oversized_put_and_part_are_400_not_500(proxy_factory) -> None:
    proxy = proxy_factory(limits=f"max_object_bytes = {2 * MIB}")
    s3 = proxy.client()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="big.bin", Body=os.urandom(2 * MIB + 1))
    assert info.value.response["Error"]["Code"] == "EntityTooLarge"
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="big.mp4")["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.upload_part(Bucket=CLIENT_BUCKET, Key="big.mp4", UploadId=upload_id, PartNumber=1,
                       Body=os.urandom(2 * MIB + 1))
    assert info.value.response["Error"]["Code"] == "EntityTooLarge"
    s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="big.mp4", UploadId=upload_id)
    assert proxy.upstream_keys() == []
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []


@pytest.fixture
def spool_limited_proxy(moto_server, tmp_path) -> Iterator[RunningProxy]:
    """A real `bucketguard serve` whose files may not grow past 2 MiB (RLIMIT_FSIZE): a spool file that has
    to grow further fails to be written, as on a full disk. Bodies over 1 MiB are spooled to a file."""
    real_bucket = new_bucket(moto_server)
    spool = tmp_path / "spool"
    spool.mkdir()
    config_path = write_config(tmp_path, moto_server, real_bucket,
                               limits=f'spool_dir = "{spool}"\njanitor_interval_s = 0.0')
    port = free_port()
    log_path = tmp_path / "proxy.log"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MIB, 2 * MIB))

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path), "--listen",
             f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_files)
    running = RunningProxy(f"http://127.0.0.1:{port}", moto_server, real_bucket, config_path, process=process,
                           log_path=log_path)
    try:
        wait_healthy(running.endpoint, process, log=log_path)
        yield running
    finally:
        running.stop()


def test_full_spool_is_slowdown_and_nothing_lands(spool_limited_proxy) -> None:
    s3 = spool_limited_proxy.client()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="spooled.bin", Body=os.urandom(3 * MIB))
    assert (info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]) \
        == ("SlowDown", 503)
    assert spool_limited_proxy.upstream_keys() == []
    small = io.BytesIO()
    Image.effect_noise((32, 32), 40).convert("RGB").save(small, format="PNG")
    s3.put_object(Bucket=CLIENT_BUCKET, Key="small.png", Body=small.getvalue(), ContentType="image/png")
    # the proxy is still serving: a small photo (held in memory) lands byte-exact
    assert spool_limited_proxy.upstream.get(spool_limited_proxy.real_bucket, "small.png") == small.getvalue()
