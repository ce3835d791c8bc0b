"""Upstream against a real S3 server (moto on loopback): streamed reads, conditions, writes, multipart, errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from proxy.config import LimitsConfig, UpstreamConfig
from proxy.s3.errors import S3Error
from proxy.storage.spool import SpooledBody
from proxy.storage.upstream import Upstream
from tests.support.moto import S3Server

KIB = 1024
MIB = 1024 * KIB


def unique_bucket() -> str:
    return f"up-{uuid.uuid4().hex[:16]}"


def upstream_for(server: S3Server, *, secret: str | None = None, limits: LimitsConfig | None = None,
                 errors: list[str] | None = None) -> Upstream:
    config = UpstreamConfig(endpoint=server.endpoint, access_key=server.access_key,
                            secret_key=server.secret_key if secret is None else secret, max_pool_connections=4)
    return Upstream(config, limits or LimitsConfig(), on_error=errors.append if errors is not None else None)


@pytest.fixture
async def upstream(moto_server: S3Server) -> AsyncIterator[Upstream]:
    client = upstream_for(moto_server)
    await client.start()
    yield client
    await client.close()


@pytest.fixture
def bucket(moto_server: S3Server) -> str:
    name = unique_bucket()
    moto_server.create_bucket(name)
    return name


def spooled(data: bytes, memory_limit: int = 64 * KIB) -> SpooledBody:
    body = SpooledBody(memory_limit=memory_limit, max_bytes=len(data) + 1)
    body.write_sync(data)
    return body


async def read_body(response) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([chunk async for chunk in response.iter_body()])


async def test_put_get_round_trip(upstream: Upstream, bucket: str, moto_server: S3Server) -> None:
    data = os.urandom(MIB + 5)
    body = spooled(data)
    assert not body.in_memory  # the spooled file goes up, not a copy in memory
    etag = (await upstream.put_object(bucket, "a/photo.jpg", body, content_type="image/jpeg",
                                      metadata={"origin": "test"},
                                      extra={"CacheControl": "max-age=60", "ContentDisposition": "inline"})).etag
    body.close()
    assert etag == f'"{hashlib.md5(data).hexdigest()}"'
    assert moto_server.get(bucket, "a/photo.jpg") == data

    response = await upstream.get_object(bucket, "a/photo.jpg")
    assert response.status == 200
    headers = response.headers
    assert headers["content-length"] == str(len(data))
    assert headers["content-type"] == "image/jpeg"
    assert headers["etag"] == etag
    assert headers["cache-control"] == "max-age=60"
    assert headers["content-disposition"] == "inline"
    assert headers["x-amz-meta-origin"] == "test"
    assert "last-modified" in headers
    chunks = [chunk async for chunk in response.iter_body(128 * KIB)]
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= 128 * KIB and len(chunks) > 1  # streamed, not read whole


async def test_range_and_conditions(upstream: Upstream, bucket: str) -> None:
    data = bytes(range(256)) * 40
    etag = (await upstream.put_object(bucket, "k", spooled(data))).etag

    partial = await upstream.get_object(bucket, "k", range="bytes=10-19")
    assert partial.status == 206
    assert partial.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert partial.headers["content-length"] == "10"
    assert await read_body(partial) == data[10:20]

    same = await upstream.get_object(bucket, "k", if_match=etag)
    assert await read_body(same) == data

    with pytest.raises(S3Error) as not_modified:
        await upstream.get_object(bucket, "k", if_none_match=etag)
    assert (not_modified.value.code, not_modified.value.status) == ("NotModified", 304)
    assert not_modified.value.headers["etag"] == etag

    with pytest.raises(S3Error) as failed:
        await upstream.get_object(bucket, "k", if_match='"0000"')
    assert (failed.value.code, failed.value.status) == ("PreconditionFailed", 412)

    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(S3Error) as not_modified_since:
        await upstream.get_object(bucket, "k", if_modified_since=later)
    assert not_modified_since.value.status == 304

    earlier = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(S3Error) as modified:
        await upstream.get_object(bucket, "k", if_unmodified_since=earlier)
    assert modified.value.code == "PreconditionFailed"

    with pytest.raises(S3Error) as bad_range:
        await upstream.get_object(bucket, "k", range=f"bytes={len(data) + 10}-")
    assert (bad_range.value.code, bad_range.value.status) == ("InvalidRange", 416)


async def test_head_and_missing_objects(upstream: Upstream, bucket: str) -> None:
    await upstream.put_object(bucket, "k", spooled(b"12345"), content_type="text/plain", metadata={"a": "b"})
    head = await upstream.head_object(bucket, "k")
    assert head.status == 200
    assert head.headers["content-length"] == "5"
    assert head.headers["content-type"] == "text/plain"
    assert head.headers["x-amz-meta-a"] == "b"
    assert await read_body(head) == b""
    with pytest.raises(S3Error) as head_not_modified:
        await upstream.head_object(bucket, "k", if_none_match=head.headers["etag"])
    assert (head_not_modified.value.code, head_not_modified.value.status) == ("NotModified", 304)
    assert head_not_modified.value.headers["etag"] == head.headers["etag"]
    with pytest.raises(S3Error) as head_failed:
        await upstream.head_object(bucket, "k", if_match='"0000"')
    assert (head_failed.value.code, head_failed.value.status) == ("PreconditionFailed", 412)

    with pytest.raises(S3Error) as missing_head:
        await upstream.head_object(bucket, "nope")
    assert (missing_head.value.code, missing_head.value.status) == ("NoSuchKey", 404)
    with pytest.raises(S3Error) as missing_key:
        await upstream.get_object(bucket, "nope")
    assert (missing_key.value.code, missing_key.value.status) == ("NoSuchKey", 404)
    with pytest.raises(S3Error) as missing_bucket:
        await upstream.get_object(unique_bucket(), "k")
    assert (missing_bucket.value.code, missing_bucket.value.status) == ("NoSuchBucket", 404)
    with pytest.raises(S3Error) as no_bucket_head:
        await upstream.head_bucket(unique_bucket())
    assert (no_bucket_head.value.code, no_bucket_head.value.status) == ("NoSuchBucket", 404)

    await upstream.delete_object(bucket, "k")
    with pytest.raises(S3Error, match="NoSuchKey"):
        await upstream.head_object(bucket, "k")
    await upstream.delete_object(bucket, "k")  # deleting a missing key is not an error, as in S3


async def test_list_objects_v2_pages_prefixes_and_odd_keys(upstream: Upstream, bucket: str) -> None:
    keys = ["a/1", "a/2", "a/3", "b/x", "top", "odd key %2F é.jpg"]
    for key in keys:
        await upstream.put_object(bucket, key, spooled(b"x"))
    first = await upstream.list_objects_v2(bucket, prefix="a/", max_keys=2)
    assert [o["Key"] for o in first.objects] == ["a/1", "a/2"]
    assert first.is_truncated and first.next_token and first.key_count == 2
    second = await upstream.list_objects_v2(bucket, prefix="a/", max_keys=2, continuation_token=first.next_token)
    assert [o["Key"] for o in second.objects] == ["a/3"] and not second.is_truncated

    grouped = await upstream.list_objects_v2(bucket, delimiter="/")
    assert grouped.common_prefixes == ["a/", "b/"]
    assert sorted(o["Key"] for o in grouped.objects) == sorted(["top", "odd key %2F é.jpg"])

    after = await upstream.list_objects_v2(bucket, start_after="b/x")
    assert [o["Key"] for o in after.objects] == ["odd key %2F é.jpg", "top"]
    assert after.objects[0]["Size"] == 1

    with pytest.raises(S3Error) as missing:
        await upstream.list_objects_v2(unique_bucket())
    assert missing.value.code == "NoSuchBucket"


async def test_multipart_upload_copy_and_abort(upstream: Upstream, bucket: str, moto_server: S3Server) -> None:
    part_one = os.urandom(5 * MIB)  # S3's minimum for all parts but the last
    part_two = os.urandom(123 * KIB)
    upload_id = await upstream.create_multipart_upload(bucket, "staging/obj", content_type="video/mp4",
                                                       metadata={"kind": "clip"})
    etag_one = await upstream.upload_part(bucket, "staging/obj", upload_id, 1, spooled(part_one, MIB))
    # A part sent again replaces the first try.
    await upstream.upload_part(bucket, "staging/obj", upload_id, 2, spooled(b"wrong"))
    etag_two = await upstream.upload_part(bucket, "staging/obj", upload_id, 2, spooled(part_two))
    assert etag_one == f'"{hashlib.md5(part_one).hexdigest()}"'
    etag = await upstream.complete_multipart_upload(bucket, "staging/obj", upload_id,
                                                    [(1, etag_one), (2, etag_two)])
    assert etag.endswith('-2"')
    assert moto_server.get(bucket, "staging/obj") == part_one + part_two

    copied = await upstream.copy_object(bucket, "staging/obj", bucket, "final/obj")
    assert copied["ETag"].strip('"')
    head = await upstream.head_object(bucket, "final/obj")
    assert head.headers["content-type"] == "video/mp4"
    assert head.headers["x-amz-meta-kind"] == "clip"
    assert head.headers["content-length"] == str(len(part_one) + len(part_two))

    with pytest.raises(S3Error) as bad_copy:
        await upstream.copy_object(bucket, "missing", bucket, "elsewhere")
    assert bad_copy.value.code == "NoSuchKey"

    other = await upstream.create_multipart_upload(bucket, "staging/other")
    await upstream.upload_part(bucket, "staging/other", other, 1, spooled(b"abc"))
    await upstream.abort_multipart_upload(bucket, "staging/other", other)
    assert moto_server.multipart_uploads(bucket) == []
    # (moto answers a part or a completion for an aborted upload with a 500 of its own; aborting again is right)
    with pytest.raises(S3Error) as gone:
        await upstream.abort_multipart_upload(bucket, "staging/other", other)
    assert (gone.value.code, gone.value.status) == ("NoSuchUpload", 404)


async def test_ready(upstream: Upstream, bucket: str) -> None:
    await upstream.ready([bucket])
    await upstream.ready([])  # no mapped buckets: ListBuckets proves the credentials
    with pytest.raises(S3Error, match="NoSuchBucket"):
        await upstream.ready([bucket, unique_bucket()])


async def test_signatures_are_checked_upstream(moto_server_auth: S3Server) -> None:
    name = unique_bucket()
    moto_server_auth.create_bucket(name)
    good = upstream_for(moto_server_auth)
    bad = upstream_for(moto_server_auth, secret="not-the-secret")
    await good.start()
    await bad.start()
    try:
        await good.put_object(name, "k", spooled(b"signed"))
        assert await read_body(await good.get_object(name, "k")) == b"signed"
        with pytest.raises(S3Error) as refused:
            await bad.get_object(name, "k")
        # The upstream refusing the proxy's OWN credentials is the server's fault, never the client's key:
        # 503, naming the upstream.
        assert (refused.value.code, refused.value.status) == ("ServiceUnavailable", 503)
        assert "SignatureDoesNotMatch" in refused.value.message and moto_server_auth.endpoint in refused.value.message
        with pytest.raises(S3Error) as refused_put:
            await bad.put_object(name, "k2", spooled(b"x"))
        assert refused_put.value.status == 503
        with pytest.raises(S3Error) as refused_forward:
            await bad.forward("GET", name, "k", {"tagging": ""}, {})
        assert (refused_forward.value.code, refused_forward.value.status) == ("ServiceUnavailable", 503)
        answer = await good.forward("GET", name, "k", {"tagging": ""}, {})
        assert answer.status == 200 and b"<TagSet" in answer.body
    finally:
        await good.close()
        await bad.close()


async def test_large_put_and_get_keep_memory_bounded(moto_server_auth: S3Server) -> None:
    """The S3 server runs in another process here, so tracemalloc sees only the proxy's side."""
    name = unique_bucket()
    moto_server_auth.create_bucket(name)
    client = upstream_for(moto_server_auth)
    await client.start()
    size = 24 * MIB
    body = SpooledBody(memory_limit=MIB, max_bytes=size)
    piece = os.urandom(MIB)
    for _ in range(size // len(piece)):
        await body.write(piece)
    try:
        tracemalloc.start()
        etag = (await client.put_object(name, "big", body)).etag
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        response = await client.get_object(name, "big")
        digest = hashlib.md5()
        async for chunk in response.iter_body():
            digest.update(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        body.close()
        await client.close()
    assert etag == f'"{digest.hexdigest()}"'
    assert put_peak < 6 * MIB, f"PUT of {size} bytes held {put_peak} bytes"
    assert get_peak < 6 * MIB, f"GET of {size} bytes held {get_peak} bytes"


async def test_connection_refused_is_service_unavailable_and_counted() -> None:
    port = _closed_port()
    errors: list[str] = []
    client = Upstream(UpstreamConfig(endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="b"),
                      LimitsConfig(upstream_connect_timeout_s=1, upstream_read_timeout_s=1), on_error=errors.append)
    await client.start()
    try:
        with pytest.raises(S3Error) as failed:
            await client.head_object("bucket", "key")
    finally:
        await client.close()
    assert (failed.value.code, failed.value.status) == ("ServiceUnavailable", 503)
    assert errors == ["head_object"]


async def test_upstream_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    errors: list[str] = []
    client = Upstream(UpstreamConfig(endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="b"),
                      LimitsConfig(upstream_connect_timeout_s=1, upstream_read_timeout_s=0.3), on_error=errors.append)
    await client.start()
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(S3Error) as failed:
            await client.get_object("bucket", "key")
    finally:
        await client.close()
        server.close()
    assert failed.value.status == 503
    # the read timeout (0.3 s, botocore's retry included) ended it, not the server's 30 s: generous for a loaded box
    assert asyncio.get_running_loop().time() - started < 20
    assert errors == ["get_object"]


async def test_upstream_slowdown_keeps_its_code_and_is_counted() -> None:
    """A 503 from the store keeps S3's code and message (after botocore's one retry) and counts as an error."""
    requests = 0

    async def overloaded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                requests += 1
                xml = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(xml), xml))
                await writer.drain()

    server = await asyncio.start_server(overloaded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    errors: list[str] = []
    client = Upstream(UpstreamConfig(endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="b"),
                      LimitsConfig(), on_error=errors.append)
    await client.start()
    try:
        with pytest.raises(S3Error) as failed:
            await client.get_object("bucket", "key")
    finally:
        await client.close()
        server.close()
    assert (failed.value.code, failed.value.status, failed.value.message) == (
        "SlowDown", 503, "Reduce your request rate.")
    assert requests == 2
    assert errors == ["SlowDown"]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_upstream_breaking_off_mid_body_is_service_unavailable() -> None:
    """An upstream killed while it sends an object (a Complete reading back its staging object, a backfill): the
    read ends in 503 ServiceUnavailable, never an unexpected 500 (seen in the load-and-fault run)."""
    async def cut_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nETag: \"x\"\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut_off, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Upstream(UpstreamConfig(endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="b"),
                      LimitsConfig(upstream_connect_timeout_s=1, upstream_read_timeout_s=2))
    await client.start()
    body = SpooledBody(memory_limit=1 << 20, max_bytes=1 << 20)
    try:
        with pytest.raises(S3Error) as failed:
            await client.read_object("bucket", "key", body)
    finally:
        body.close()
        await client.close()
        server.close()
    assert (failed.value.code, failed.value.status) == ("ServiceUnavailable", 503)
