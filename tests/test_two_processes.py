"""Two `bucketguard serve` processes sharing one SQLite file complete one multipart upload between them;
and the proxy's re-signing is checked by an S3 server that verifies signatures itself."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from proxy.demo.pictrs_client import PictrsClient
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY, new_bucket, start_subprocess, write_config

MIB = 1024 * 1024
#: An MP4 file-type box: the proxy keeps out bytes that are no media (on_non_media = "reject"), so the random
#: payloads of these transport tests start as an MP4 does (no detectors are configured: they land pending).
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


def media_bytes(size: int) -> bytes:
    return MP4_HEAD + os.urandom(size - len(MP4_HEAD))


def pictrs(endpoint: str, generation: str = "header") -> PictrsClient:
    return PictrsClient(endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], generation=generation,
                        path_style=True)


def test_multipart_spread_over_two_processes(moto_server: S3Server, tmp_path) -> None:
    bucket = new_bucket(moto_server)
    config = write_config(tmp_path, moto_server, bucket)
    first = start_subprocess(config, moto_server, bucket)
    second = start_subprocess(config, moto_server, bucket)
    try:
        a, b = pictrs(first.endpoint), pictrs(second.endpoint)
        parts = [media_bytes(5 * MIB)] + [os.urandom(5 * MIB) for _ in range(3)] + [os.urandom(777)]
        upload_id = a.create_multipart("shared.mp4", "video/mp4")

        def send(item):
            number, data = item
            client = a if number % 2 else b
            return number, client.upload_part("shared.mp4", upload_id, number, data)

        with ThreadPoolExecutor(4) as pool:
            etags = dict(pool.map(send, reversed(list(enumerate(parts, start=1)))))
        b.complete_multipart("shared.mp4", upload_id, etags)
        whole = b"".join(parts)
        assert hashlib.sha256(moto_server.get(bucket, "shared.mp4")).hexdigest() == hashlib.sha256(whole).hexdigest()
        assert a.get("shared.mp4", "bytes=0-9") == whole[:10]
        assert moto_server.keys(bucket) == ["shared.mp4"]
    finally:
        first.stop()
        second.stop()


def test_round_trips_against_a_signature_checking_upstream(moto_server_auth: S3Server, tmp_path) -> None:
    bucket = new_bucket(moto_server_auth)
    config = write_config(tmp_path, moto_server_auth, bucket)
    proxy = start_subprocess(config, moto_server_auth, bucket)
    try:
        for generation in ("presigned", "header"):
            client = pictrs(proxy.endpoint, generation)
            image = media_bytes(150_000)
            assert client.store(f"{generation}.webp", image, "image/webp") == image
            video = media_bytes(9 * MIB)
            client.put_multipart(f"{generation}.mp4", video, "video/mp4", part_bytes=5 * MIB)
            assert moto_server_auth.get(bucket, f"{generation}.mp4") == video
            client.delete(f"{generation}.webp")
        assert sorted(moto_server_auth.keys(bucket)) == ["header.mp4", "presigned.mp4"]
    finally:
        proxy.stop()
