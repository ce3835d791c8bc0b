"""The proxy's own objects leave a versioned bucket completely: staging keys (janitor and front) and purged
quarantine bytes are deleted version by version, judged by ListObjectVersions on the real upstream (moto, and
Ceph RGW where it is installed: tests/support/rgw.py).

A plain DELETE on a versioned bucket only adds a delete marker: the unscreened (or caught) bytes would stay
readable by version id in the real bucket.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions
import pytest

from proxy.config import QuarantineConfig, load_config
from proxy.evidence.store import S3Store
from proxy.front.calls import STAGING_PREFIX
from proxy.front.multipart import MultipartState, new_upload_id
from proxy.front.operations import Operations
from proxy.jobs.janitor import Janitor
from proxy.metrics import ProxyMetrics
from proxy.s3.errors import S3Error
from proxy.screening.upload import Upload, Verdict, allow_all
from proxy.state import Database
from proxy.storage.upstream import Upstream
from tests.support.balancer import start_balancer
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, new_bucket, write_config

MIB = 1024 * 1024


def versioned_bucket(server: S3Server) -> str:
    bucket = new_bucket(server)
    server.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def versions(server: S3Server, bucket: str, prefix: str) -> list[tuple[str, str]]:
    """(key, kind) of every version and delete marker under `prefix`, straight from the upstream."""
    found: list[tuple[str, str]] = []
    for page in server.client().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        found += [(v["Key"], "version") for v in page.get("Versions", [])]
        found += [(m["Key"], "marker") for m in page.get("DeleteMarkers", [])]
    return sorted(found)


@dataclass
class Parts:
    db: Database
    upstream: Upstream
    multipart: MultipartState
    operations: Operations
    bucket: str


@asynccontextmanager
async def janitor_parts(server: S3Server, bucket: str, database_url: str, tmp_path: Path) -> AsyncIterator[Parts]:
    """The janitor's real parts: multipart state on the test database, the upstream client, the front's abort."""
    config = load_config(write_config(tmp_path, server, bucket, limits="janitor_interval_s = 0.0"))
    db = Database(database_url)
    await db.migrate()
    upstream = Upstream(config.upstream, config.limits)
    await upstream.start()
    multipart = MultipartState(db)
    try:
        yield Parts(db, upstream, multipart, Operations(config, upstream, multipart, allow_all, ProxyMetrics()),
                    bucket)
    finally:
        await upstream.close()
        await db.close()


def janitor_for(parts: Parts) -> Janitor:
    return Janitor(parts.multipart, parts.upstream, parts.operations.abort_upload, staging_prefix=STAGING_PREFIX,
                   served_buckets=[parts.bucket], interval_s=60, age_s=0)


async def live_upload(parts: Parts) -> str:
    """A staging key in use: its completer holds a live lease and is screening it right now."""
    upload_id = new_upload_id()
    await parts.multipart.create(upload_id=upload_id, upstream_upload_id="up", bucket=CLIENT_BUCKET,
                                 real_bucket=parts.bucket, key="video.mp4", staging_key=STAGING_PREFIX + upload_id,
                                 access_key="AKPICTRS", content_type="video/mp4", metadata={})
    assert await parts.multipart.claim_completion(upload_id, lease_s=600) == "open"
    return upload_id


@pytest.fixture(params=["moto", "rgw"])
def upstream_server(request: pytest.FixtureRequest) -> S3Server:
    """The real upstream: moto, and Ceph RGW (a one-node cluster shared by the session)."""
    return request.getfixturevalue({"moto": "moto_server", "rgw": "rgw_server"}[request.param])


@pytest.fixture
async def parts(upstream_server: S3Server, database_url: str, tmp_path: Path) -> AsyncIterator[Parts]:
    async with janitor_parts(upstream_server, versioned_bucket(upstream_server), database_url, tmp_path) as opened:
        yield opened


async def test_janitor_deletes_every_version_of_orphaned_staging_keys(parts: Parts,
                                                                     upstream_server: S3Server) -> None:
    s3 = upstream_server.client()
    bucket = parts.bucket
    orphan = f"{STAGING_PREFIX}orphan-{uuid.uuid4().hex}"  # a proxy killed between the verdict and the delete
    hidden = f"{STAGING_PREFIX}hidden-{uuid.uuid4().hex}"  # deleted plainly: only old versions hold its bytes
    live_id = await live_upload(parts)
    live = f"{STAGING_PREFIX}{live_id}"
    for key in (orphan, orphan, hidden, live):
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(100))
    s3.delete_object(Bucket=bucket, Key=hidden)
    s3.put_object(Bucket=bucket, Key="client/photo.png", Body=b"v1")  # a client's versions are not the janitor's
    s3.put_object(Bucket=bucket, Key="client/photo.png", Body=b"v2")
    assert s3.list_objects_v2(Bucket=bucket, Prefix=hidden)["KeyCount"] == 0  # invisible to a plain listing
    assert versions(upstream_server, bucket, hidden) == [(hidden, "marker"), (hidden, "version")]

    janitor = janitor_for(parts)
    first = await janitor.run_once()  # nothing goes before this process has seen it unowned for the age
    assert first.orphans_deleted == 0
    assert versions(upstream_server, bucket, STAGING_PREFIX) == sorted(
        [(orphan, "version"), (orphan, "version"), (hidden, "marker"), (hidden, "version"), (live, "version")])
    second = await janitor.run_once()
    assert second.orphans_deleted == 2
    assert versions(upstream_server, bucket, STAGING_PREFIX) == [(live, "version")]
    assert versions(upstream_server, bucket, "client/") == [("client/photo.png", "version")] * 2
    assert (await parts.multipart.get(live_id)).state == "completing"  # type: ignore[union-attr]


@contextmanager
def refusing_versions(moto_server: S3Server) -> Iterator[tuple[S3Server, list[str]]]:
    """moto behind a relay that answers ListObjectVersions with AccessDenied, as an upstream identity without
    s3:ListBucketVersions gets it (moto here grants everything); yields the relay's endpoint and the refusals."""
    relay = start_balancer([moto_server.endpoint])
    forward = relay.app._forward
    refused: list[str] = []

    async def refuse_versions(scope, send, target, query, headers, body):  # type: ignore[no-untyped-def]
        if scope["method"] == "GET" and "versions" in query.split("&"):
            refused.append(target)
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/xml")]})
            await send({"type": "http.response.body", "body": b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
                        b"<Code>AccessDenied</Code><Message>Access Denied</Message></Error>"})
            return
        await forward(scope, send, target, query, headers, body)

    relay.app._forward = refuse_versions  # type: ignore[method-assign]
    try:
        yield S3Server(relay.endpoint, moto_server.access_key, moto_server.secret_key), refused
    finally:
        relay.stop()


async def test_janitor_sweeps_current_objects_where_versions_cannot_be_listed(
        moto_server: S3Server, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bucket = new_bucket(moto_server)
    with refusing_versions(moto_server) as (server, refused):
        async with janitor_parts(server, bucket, database_url, tmp_path) as parts:
            live = STAGING_PREFIX + await live_upload(parts)
            orphan = f"{STAGING_PREFIX}orphan-{uuid.uuid4().hex}"
            for key in (orphan, live, "client/photo.png"):
                moto_server.client().put_object(Bucket=bucket, Key=key, Body=b"bytes")
            janitor = janitor_for(parts)
            with caplog.at_level("WARNING", logger="bucketguard.janitor"):
                await janitor.run_once()
                assert (await janitor.run_once()).orphans_deleted == 1
            assert moto_server.keys(bucket) == sorted([live, "client/photo.png"])
            assert len(refused) == 1  # asked once; then current objects only
            assert "cannot list object versions" in caplog.text


def test_a_landed_multipart_upload_stays_landed_where_versions_cannot_be_listed(
        proxy_factory, moto_server: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    """The staging key's old versions cannot go there: the upload still lands and answers 200; a warning says so."""
    bucket = versioned_bucket(moto_server)
    with refusing_versions(moto_server) as (server, refused), caplog.at_level("WARNING", "bucketguard.storage"):
        proxy = proxy_factory(upstream=server, real_bucket=bucket, limits="janitor_interval_s = 0.0")
        s3 = proxy.client()
        upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="v.mp4")["UploadId"]
        etag = s3.upload_part(Bucket=CLIENT_BUCKET, Key="v.mp4", UploadId=upload_id, PartNumber=1, Body=b"x")["ETag"]
        s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="v.mp4", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        assert moto_server.get(bucket, "v.mp4") == b"x"
        assert len(refused) == 1 and "its old versions stay" in caplog.text


def test_multipart_refused_or_landed_leaves_no_staging_version(proxy_factory, upstream_server: S3Server) -> None:
    bucket = versioned_bucket(upstream_server)

    async def screen(upload: Upload) -> Verdict:
        return Verdict("quarantine", rule="test") if upload.key.startswith("bad") else Verdict("allow")

    proxy = proxy_factory(screen=screen, upstream=upstream_server, real_bucket=bucket,
                          limits="janitor_interval_s = 0.0")
    s3 = proxy.client()
    data = [os.urandom(5 * MIB), os.urandom(1000)]
    for key in ("bad.mp4", "good.mp4"):
        upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key=key)["UploadId"]
        etags = [s3.upload_part(Bucket=CLIENT_BUCKET, Key=key, UploadId=upload_id, PartNumber=n, Body=part)["ETag"]
                 for n, part in enumerate(data, start=1)]
        complete = {"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]}
        if key == "bad.mp4":
            with pytest.raises(botocore.exceptions.ClientError) as info:
                s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key=key, UploadId=upload_id,
                                             MultipartUpload=complete)
            assert info.value.response["Error"]["Code"] == "AccessDenied"
        else:
            s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key=key, UploadId=upload_id, MultipartUpload=complete)
    assert versions(upstream_server, bucket, "") == [("good.mp4", "version")]
    assert upstream_server.get(bucket, "good.mp4") == b"".join(data)


async def test_purged_quarantine_bytes_leave_a_versioned_quarantine_bucket(upstream_server: S3Server) -> None:
    bucket = versioned_bucket(upstream_server)
    store = S3Store(QuarantineConfig(store="s3", bucket=bucket, endpoint=upstream_server.endpoint,
                                     access_key=upstream_server.access_key, secret_key=upstream_server.secret_key))
    try:
        item_id = uuid.uuid4().hex
        await store.put(item_id, b"caught bytes", 12)
        await store.put(item_id, b"caught bytes", 12)  # written twice (a retried record): two versions
        other = uuid.uuid4().hex
        await store.put(other, b"other item", 10)
        await store.delete(item_id)
        assert not await store.exists(item_id)
        assert versions(upstream_server, bucket, "") == [(other, "version")]
    finally:
        await store.close()


async def test_upstream_lists_versions_and_deletes_one_by_its_id(moto_server: S3Server, tmp_path: Path) -> None:
    """The public Upstream.list_object_versions / delete_object(version_id) that proxy/storage/versions.py uses."""
    bucket = versioned_bucket(moto_server)
    s3 = moto_server.client()
    ids = [s3.put_object(Bucket=bucket, Key="k", Body=body)["VersionId"] for body in (b"v1", b"v2")]
    s3.put_object(Bucket=bucket, Key="k-other", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="k")
    config = load_config(write_config(tmp_path, moto_server, bucket))
    upstream = Upstream(config.upstream, config.limits)
    await upstream.start()
    try:
        page = await upstream.list_object_versions(bucket, prefix="k")
        assert sorted(v["VersionId"] for v in page["Versions"] if v["Key"] == "k") == sorted(ids)
        assert [m["Key"] for m in page["DeleteMarkers"]] == ["k"] and not page["IsTruncated"]
        answer = await upstream.delete_object(bucket, "k", ids[0])
        assert answer.get("x-amz-version-id") == ids[0]
        with pytest.raises(S3Error) as missing:
            await upstream.list_object_versions(f"{bucket}-absent")
        assert missing.value.code == "NoSuchBucket"
    finally:
        await upstream.close()
    assert versions(moto_server, bucket, "k") == [("k", "marker"), ("k", "version"), ("k-other", "version")]
    assert moto_server.client().get_object(Bucket=bucket, Key="k", VersionId=ids[1])["Body"].read() == b"v2"
