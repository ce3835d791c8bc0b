"""The S3 surface through the proxy, with boto3 in front and moto behind, judged on moto itself.

The screen here is a plug-in on the proxy's screening seam that refuses any body containing ``FORBIDDEN``
(the real pipeline is tested elsewhere); it lets a copy or multipart test prove that what is refused never
lands, wherever its bytes come from.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import zlib
from collections.abc import Iterator

import botocore.exceptions
import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.config import load_config
from proxy.screening.upload import ALLOW, Upload, Verdict
from tests.support.proxy import (
    CLIENT_BUCKET,
    CLIENTS,
    PICTRS_KEY,
    RunningProxy,
    new_bucket,
    start_in_process,
    write_config,
)

MIB = 1024 * 1024
FORBIDDEN = b"FORBIDDEN"


async def marker_screen(upload: Upload) -> Verdict:
    data = upload.body.read_all()
    return Verdict("quarantine", rule="test-marker") if FORBIDDEN in data else ALLOW


@pytest.fixture(scope="module")
def surface(moto_server, tmp_path_factory) -> Iterator[RunningProxy]:
    real_bucket = new_bucket(moto_server)
    config_path = write_config(tmp_path_factory.mktemp("surface"), moto_server, real_bucket)
    running = start_in_process(load_config(config_path), moto_server, real_bucket, config_path,
                               screen=marker_screen)
    yield running
    running.stop()


@pytest.fixture
def s3(surface):
    return surface.client()


def code_of(info: pytest.ExceptionInfo) -> str:
    return info.value.response["Error"]["Code"]


def status_of(info: pytest.ExceptionInfo) -> int:
    return info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_list_buckets_shows_served_names_only(surface, s3, moto_server) -> None:
    moto_server.create_bucket("not-served-elsewhere")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == [CLIENT_BUCKET]


def test_create_bucket_answers_as_s3_answers_its_owner(surface, s3, moto_server) -> None:
    before = {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    assert s3.create_bucket(Bucket=CLIENT_BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.create_bucket(Bucket=CLIENT_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert (code_of(info), status_of(info)) == ("BucketAlreadyOwnedByYou", 409)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.create_bucket(Bucket="brand-new-bucket")
    assert code_of(info) in ("AccessDenied", "NoSuchBucket")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.delete_bucket(Bucket=CLIENT_BUCKET)
    assert code_of(info) == "AccessDenied"
    assert {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]} == before


def test_bucket_queries(s3) -> None:
    assert s3.head_bucket(Bucket=CLIENT_BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket=CLIENT_BUCKET)["LocationConstraint"] is None
    assert s3.get_bucket_versioning(Bucket=CLIENT_BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    acl = s3.get_bucket_acl(Bucket=CLIENT_BUCKET)
    assert acl["Owner"] and acl["Grants"]


def test_delete_objects_quiet_and_verbose(surface, s3) -> None:
    for key in ("d/1", "d/2", "d/3"):
        s3.put_object(Bucket=CLIENT_BUCKET, Key=key, Body=b"x")
    answer = s3.delete_objects(Bucket=CLIENT_BUCKET, Delete={"Objects": [
        {"Key": "d/1"}, {"Key": "d/2"}, {"Key": ".bucketguard/staging/anything"}]})
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["d/1", "d/2"]
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [(".bucketguard/staging/anything", "AccessDenied")]
    quiet = s3.delete_objects(Bucket=CLIENT_BUCKET, Delete={"Objects": [{"Key": "d/3"}], "Quiet": True})
    assert "Deleted" not in quiet
    assert [k for k in surface.upstream_keys("d/")] == []
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.delete_objects(Bucket=CLIENT_BUCKET, Delete={"Objects": [{"Key": f"k{i}"} for i in range(1001)]})
    assert code_of(info) == "MalformedXML"


def test_copy_object_is_screened_and_keeps_or_replaces_metadata(surface, s3) -> None:
    s3.put_object(Bucket=CLIENT_BUCKET, Key="c/src", Body=b"clean bytes", ContentType="image/png",
                  Metadata={"a": "1"})
    copied = s3.copy_object(Bucket=CLIENT_BUCKET, Key="c/dst", CopySource={"Bucket": CLIENT_BUCKET, "Key": "c/src"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"clean bytes").hexdigest()}"'
    assert surface.upstream.get(surface.real_bucket, "c/dst") == b"clean bytes"
    head = s3.head_object(Bucket=CLIENT_BUCKET, Key="c/dst")
    assert (head["ContentType"], head["Metadata"]) == ("image/png", {"a": "1"})
    s3.copy_object(Bucket=CLIENT_BUCKET, Key="c/dst", CopySource=f"{CLIENT_BUCKET}/c/src",
                   MetadataDirective="REPLACE", ContentType="image/jpeg", Metadata={"b": "2"})
    head = s3.head_object(Bucket=CLIENT_BUCKET, Key="c/dst")
    assert (head["ContentType"], head["Metadata"]) == ("image/jpeg", {"b": "2"})

    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.copy_object(Bucket=CLIENT_BUCKET, Key="c/dst2", CopySource=f"{CLIENT_BUCKET}/c/src",
                       CopySourceIfMatch='"0123"')
    assert (code_of(info), status_of(info)) == ("PreconditionFailed", 412)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.copy_object(Bucket=CLIENT_BUCKET, Key="c/src", CopySource=f"{CLIENT_BUCKET}/c/src")
    assert code_of(info) == "InvalidRequest"
    assert "c/dst2" not in surface.upstream_keys("c/")


def test_copy_of_refused_bytes_never_lands(surface, s3) -> None:
    # Planted straight into the real bucket (as if it predated the proxy): copying it is an upload.
    surface.upstream.client().put_object(Bucket=surface.real_bucket, Key="c/planted", Body=b"xx" + FORBIDDEN)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.copy_object(Bucket=CLIENT_BUCKET, Key="c/laundered", CopySource=f"{CLIENT_BUCKET}/c/planted")
    assert code_of(info) == "AccessDenied"
    assert "c/laundered" not in surface.upstream_keys("c/")
    for source in (".bucketguard/staging/x", "real-elsewhere/k"):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.copy_object(Bucket=CLIENT_BUCKET, Key="c/other", CopySource=f"{CLIENT_BUCKET}/{source}"
                           if source.startswith(".") else source)
        assert code_of(info) == "AccessDenied"
    assert "c/other" not in surface.upstream_keys("c/")


def test_conditional_put(surface, s3) -> None:
    first = s3.put_object(Bucket=CLIENT_BUCKET, Key="cond/k", Body=b"one")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="cond/k", Body=b"two", IfNoneMatch="*")
    assert status_of(info) == 412
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="cond/k", Body=b"two", IfMatch='"00000000000000000000000000000000"')
    assert status_of(info) == 412
    assert surface.upstream.get(surface.real_bucket, "cond/k") == b"one"
    s3.put_object(Bucket=CLIENT_BUCKET, Key="cond/k", Body=b"three", IfMatch=first["ETag"])
    assert surface.upstream.get(surface.real_bucket, "cond/k") == b"three"
    s3.put_object(Bucket=CLIENT_BUCKET, Key="cond/new", Body=b"new", IfNoneMatch="*")
    assert surface.upstream.get(surface.real_bucket, "cond/new") == b"new"


def _parts(s3, key: str, parts: list[bytes]) -> tuple[str, list[dict]]:
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=CLIENT_BUCKET, Key=key, UploadId=upload_id,
                                                      PartNumber=n, Body=data)["ETag"]}
            for n, data in enumerate(parts, start=1)]
    return upload_id, done


def test_multipart_listing_etag_and_repeated_complete(surface, s3) -> None:
    parts = [os.urandom(5 * MIB), b"tail"]
    upload_id, done = _parts(s3, "mp/obj", parts)
    listed = s3.list_multipart_uploads(Bucket=CLIENT_BUCKET, Prefix="mp/")
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == [("mp/obj", upload_id)]
    listed_parts = s3.list_parts(Bucket=CLIENT_BUCKET, Key="mp/obj", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed_parts] == [
        (d["PartNumber"], d["ETag"], len(data)) for d, data in zip(done, parts, strict=True)]
    assert all(e["ETag"].startswith('"') for e in done)

    result = s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="mp/obj", UploadId=upload_id,
                                          MultipartUpload={"Parts": done})
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert result["ETag"] == f'"{expected}-2"'
    assert s3.head_object(Bucket=CLIENT_BUCKET, Key="mp/obj")["ETag"] == result["ETag"]
    again = s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="mp/obj", UploadId=upload_id,
                                         MultipartUpload={"Parts": done})
    assert again["ETag"] == result["ETag"]
    assert surface.upstream.get(surface.real_bucket, "mp/obj") == b"".join(parts)
    assert surface.upstream_keys(".bucketguard/") == []
    assert s3.list_multipart_uploads(Bucket=CLIENT_BUCKET, Prefix="mp/").get("Uploads", []) == []


def test_conditional_complete(surface, s3) -> None:
    s3.put_object(Bucket=CLIENT_BUCKET, Key="mpc/k", Body=b"existing")
    upload_id, done = _parts(s3, "mpc/k", [b"replacement"])
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="mpc/k", UploadId=upload_id,
                                     MultipartUpload={"Parts": done}, IfNoneMatch="*")
    assert status_of(info) == 412
    assert surface.upstream.get(surface.real_bucket, "mpc/k") == b"existing"
    s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="mpc/k", UploadId=upload_id)
    assert surface.upstream_keys(".bucketguard/") == []


def test_upload_part_copy_is_screened_at_complete(surface, s3) -> None:
    clean = os.urandom(5 * MIB)
    s3.put_object(Bucket=CLIENT_BUCKET, Key="upc/clean", Body=clean)
    surface.upstream.client().put_object(Bucket=surface.real_bucket, Key="upc/planted", Body=FORBIDDEN * 10)
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="upc/out")["UploadId"]
    one = s3.upload_part_copy(Bucket=CLIENT_BUCKET, Key="upc/out", UploadId=upload_id, PartNumber=1,
                              CopySource=f"{CLIENT_BUCKET}/upc/clean")["CopyPartResult"]["ETag"]
    two = s3.upload_part_copy(Bucket=CLIENT_BUCKET, Key="upc/out", UploadId=upload_id, PartNumber=2,
                              CopySource=f"{CLIENT_BUCKET}/upc/clean", CopySourceRange="bytes=0-99")
    parts = [{"PartNumber": 1, "ETag": one}, {"PartNumber": 2, "ETag": two["CopyPartResult"]["ETag"]}]
    s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="upc/out", UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})
    assert surface.upstream.get(surface.real_bucket, "upc/out") == clean + clean[:100]

    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="upc/bad")["UploadId"]
    etag = s3.upload_part_copy(Bucket=CLIENT_BUCKET, Key="upc/bad", UploadId=upload_id, PartNumber=1,
                               CopySource=f"{CLIENT_BUCKET}/upc/planted")["CopyPartResult"]["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="upc/bad", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert code_of(info) == "AccessDenied"
    assert "upc/bad" not in surface.upstream_keys("upc/")
    assert surface.upstream_keys(".bucketguard/") == []
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.upload_part_copy(Bucket=CLIENT_BUCKET, Key="upc/bad", UploadId=upload_id, PartNumber=1,
                            CopySource=f"{CLIENT_BUCKET}/.bucketguard/staging/x")
    assert code_of(info) == "AccessDenied"


def test_object_versions_hide_staging_keys(surface, s3) -> None:
    s3.put_object(Bucket=CLIENT_BUCKET, Key="v/one", Body=b"1")
    upload_id, _ = _parts(s3, "v/pending", [b"x"])  # its staging object exists only as an upstream upload
    surface.upstream.client().put_object(Bucket=surface.real_bucket, Key=".bucketguard/staging/leftover", Body=b"s")
    try:
        listing = s3.list_object_versions(Bucket=CLIENT_BUCKET)
        assert listing["Name"] == CLIENT_BUCKET
        keys = [v["Key"] for v in listing.get("Versions", [])]
        assert "v/one" in keys and not any(k.startswith(".bucketguard/") for k in keys)
    finally:
        s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="v/pending", UploadId=upload_id)
        surface.upstream.client().delete_object(Bucket=surface.real_bucket, Key=".bucketguard/staging/leftover")


def test_object_attributes(s3) -> None:
    s3.put_object(Bucket=CLIENT_BUCKET, Key="attr/k", Body=b"12345")
    answer = s3.get_object_attributes(Bucket=CLIENT_BUCKET, Key="attr/k", ObjectAttributes=["ETag", "ObjectSize"])
    assert answer["ObjectSize"] == 5


def test_checksums_verified_and_echoed(surface, s3) -> None:
    data = b"checksummed body"
    put = s3.put_object(Bucket=CLIENT_BUCKET, Key="sum/k", Body=data, ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="sum/bad", Body=data, ChecksumSHA256=wrong)
    assert code_of(info) in ("BadDigest", "InvalidRequest", "XAmzContentChecksumMismatch")
    assert "sum/bad" not in surface.upstream_keys("sum/")


def test_utf8_metadata_is_verified_as_sent(surface, s3) -> None:
    """A UTF-8 metadata value is signed (and sent) as its UTF-8 bytes, as the AWS SDKs do it."""
    value = "Grüße, 世界"
    request = AWSRequest(method="PUT", url=f"{surface.endpoint}/{CLIENT_BUCKET}/meta/k", data=b"m", headers={
        "x-amz-meta-title": value, "x-amz-content-sha256": hashlib.sha256(b"m").hexdigest()})
    S3SigV4Auth(Credentials(PICTRS_KEY, CLIENTS[PICTRS_KEY]), "s3", "us-east-1").add_auth(request)
    headers = [(k.encode(), v.encode("utf-8")) for k, v in request.prepare().headers.items()]
    answer = httpx.put(request.url, headers=headers, content=b"m")
    assert answer.status_code == 200, answer.text
    # botocore reads header bytes as latin-1: the same text means the same bytes, UTF-8 as the client sent them.
    encoded = value.encode("utf-8").decode("latin-1")
    stored = surface.upstream.client().head_object(Bucket=surface.real_bucket, Key="meta/k")["Metadata"]
    assert stored["title"] == encoded
    url = surface.client(signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": CLIENT_BUCKET, "Key": "meta/k"})
    served = httpx.get(url)
    assert served.status_code == 200, served.text
    assert dict(served.headers.raw)[b"x-amz-meta-title"] == value.encode("utf-8")
    tampered = [(k, v.replace("世".encode(), "丗".encode())) for k, v in headers]
    assert httpx.put(request.url, headers=tampered, content=b"m").status_code == 403


def test_list_objects_v1_prefix_and_marker(s3) -> None:
    for key in ("v1/a b", "v1/c+d", "v1/e"):
        s3.put_object(Bucket=CLIENT_BUCKET, Key=key, Body=b"x")
    page = s3.list_objects(Bucket=CLIENT_BUCKET, Prefix="v1/", Marker="v1/a b", MaxKeys=1)
    assert page["Prefix"] == "v1/" and page["Marker"] == "v1/a b"
    assert [o["Key"] for o in page["Contents"]] == ["v1/c+d"]
    assert page["IsTruncated"] is True
    assert all(o["ETag"].startswith('"') for o in page["Contents"])


def test_reads_by_part_and_ranged_head(surface, s3) -> None:
    parts = [os.urandom(5 * MIB), b"last part"]
    upload_id, done = _parts(s3, "pn/obj", parts)
    s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="pn/obj", UploadId=upload_id,
                                 MultipartUpload={"Parts": done})
    # moto answers a part read with the whole object: the proxy must answer exactly what its upstream does.
    direct = surface.upstream.client()
    second = s3.get_object(Bucket=CLIENT_BUCKET, Key="pn/obj", PartNumber=2)
    assert second["Body"].read() == direct.get_object(Bucket=surface.real_bucket, Key="pn/obj",
                                                      PartNumber=2)["Body"].read()
    assert s3.head_object(Bucket=CLIENT_BUCKET, Key="pn/obj", PartNumber=2)["ContentLength"] == direct.head_object(
        Bucket=surface.real_bucket, Key="pn/obj", PartNumber=2)["ContentLength"]
    ranged = s3.head_object(Bucket=CLIENT_BUCKET, Key="pn/obj", Range="bytes=0-9")
    assert (ranged["ResponseMetadata"]["HTTPStatusCode"], ranged["ContentLength"]) == (206, 10)


def test_tags_given_with_the_upload_are_kept(surface, s3) -> None:
    s3.put_object(Bucket=CLIENT_BUCKET, Key="tag/put", Body=b"x", Tagging="kind=photo&size=small")
    direct = surface.upstream.client()
    assert direct.get_object_tagging(Bucket=surface.real_bucket, Key="tag/put")["TagSet"] == [
        {"Key": "kind", "Value": "photo"}, {"Key": "size", "Value": "small"}]
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="tag/mp", Tagging="kind=video")["UploadId"]
    etag = s3.upload_part(Bucket=CLIENT_BUCKET, Key="tag/mp", UploadId=upload_id, PartNumber=1, Body=b"v")["ETag"]
    s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="tag/mp", UploadId=upload_id,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert direct.get_object_tagging(Bucket=surface.real_bucket, Key="tag/mp")["TagSet"] == [
        {"Key": "kind", "Value": "video"}]


def test_part_checksums_owners_and_version_filters(surface, s3) -> None:
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="ck/mp", ChecksumAlgorithm="CRC32")["UploadId"]
    part = s3.upload_part(Bucket=CLIENT_BUCKET, Key="ck/mp", UploadId=upload_id, PartNumber=1, Body=b"part",
                          ChecksumAlgorithm="CRC32")
    assert part["ChecksumCRC32"] == base64.b64encode(zlib.crc32(b"part").to_bytes(4, "big")).decode()
    s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="ck/mp", UploadId=upload_id)
    s3.put_object(Bucket=CLIENT_BUCKET, Key="ck/owned", Body=b"o")
    listed = s3.list_objects(Bucket=CLIENT_BUCKET, Prefix="ck/")["Contents"]
    assert all("Owner" in item for item in listed)
    versions = s3.list_object_versions(Bucket=CLIENT_BUCKET, Prefix="ck/", Delimiter="/")
    assert [v["Key"] for v in versions["Versions"]] == ["ck/owned"]


def test_multipart_errors_in_s3_order(surface, s3) -> None:
    s3.put_object(Bucket=CLIENT_BUCKET, Key="err/src", Body=b"0123456789")
    upload_id, done = _parts(s3, "err/mp", [b"small", b"small too"])
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="err/mp", UploadId=upload_id,
                                     MultipartUpload={"Parts": list(reversed(done))})
    assert code_of(info) == "EntityTooSmall"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.upload_part_copy(Bucket=CLIENT_BUCKET, Key="err/mp", UploadId=upload_id, PartNumber=3,
                            CopySource=f"{CLIENT_BUCKET}/err/src", CopySourceRange="bytes=0-99999")
    assert (code_of(info), status_of(info)) == ("InvalidRange", 416)
    s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="err/mp", UploadId=upload_id)
    assert surface.upstream_keys(".bucketguard/") == []


def test_presigned_urls_v2_and_v4(surface, s3) -> None:
    """boto3's default presigned URL (SigV2 query form) works; expiry and tampering answer as S3 does."""
    s3.put_object(Bucket=CLIENT_BUCKET, Key="pre/k", Body=b"presigned bytes")
    v2 = surface.client()  # no signature_version: boto3 presigns with SigV2
    url = v2.generate_presigned_url("get_object", Params={"Bucket": CLIENT_BUCKET, "Key": "pre/k"})
    assert "AWSAccessKeyId=" in url
    got = httpx.get(url)
    assert got.content == b"presigned bytes", got.text
    assert httpx.get(url.replace("pre/k", "pre/other")).status_code == 403
    expired = v2.generate_presigned_url("get_object", Params={"Bucket": CLIENT_BUCKET, "Key": "pre/k"},
                                        ExpiresIn=-10)
    answer = httpx.get(expired)
    assert answer.status_code == 403 and b"expired" in answer.content
    put_url = v2.generate_presigned_url("put_object", Params={"Bucket": CLIENT_BUCKET, "Key": "pre/put"})
    assert httpx.put(put_url, content=b"uploaded").status_code == 200
    assert surface.upstream.get(surface.real_bucket, "pre/put") == b"uploaded"
    refused = httpx.put(put_url, content=b"FORBIDDEN inside")
    assert refused.status_code == 403
    assert surface.upstream.get(surface.real_bucket, "pre/put") == b"uploaded"

    v4 = surface.client(signature_version="s3v4")
    for expires in (8 * 24 * 3600, -5):
        too_long = v4.generate_presigned_url("get_object", Params={"Bucket": CLIENT_BUCKET, "Key": "pre/k"},
                                             ExpiresIn=expires)
        assert httpx.get(too_long).status_code == 403


def test_malformed_http_is_answered_in_s3_xml(proxy_factory) -> None:
    """A request the HTTP parser itself rejects (a real `bucketguard serve`) still gets an S3 XML error."""
    proxy = proxy_factory(subprocess=True)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"PUT /pictrs/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: nope\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/xml" in head
    assert b"<Code>BadRequest</Code>" in body
    assert proxy.upstream_keys() == []


def test_copy_and_multipart_keep_the_settings_asked_for(surface, s3) -> None:
    s3.put_object(Bucket=CLIENT_BUCKET, Key="set/src", Body=b"s", Tagging="kind=photo")
    s3.copy_object(Bucket=CLIENT_BUCKET, Key="set/dst", CopySource=f"{CLIENT_BUCKET}/set/src",
                   TaggingDirective="REPLACE", Tagging="state=copied", ACL="public-read")
    direct = surface.upstream.client()
    assert direct.get_object_tagging(Bucket=surface.real_bucket, Key="set/dst")["TagSet"] == [
        {"Key": "state", "Value": "copied"}]
    grants = direct.get_object_acl(Bucket=surface.real_bucket, Key="set/dst")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in grants)
    put = s3.put_object(Bucket=CLIENT_BUCKET, Key="set/sse", Body=b"e", ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256"
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="set/mp", ACL="public-read")["UploadId"]
    etag = s3.upload_part(Bucket=CLIENT_BUCKET, Key="set/mp", UploadId=upload_id, PartNumber=1, Body=b"m")["ETag"]
    s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="set/mp", UploadId=upload_id,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    grants = direct.get_object_acl(Bucket=surface.real_bucket, Key="set/mp")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in grants)


def test_upstream_refusing_the_proxys_own_key_is_a_server_error(proxy_factory, moto_server_auth) -> None:
    """moto with signature checking, the proxy configured with a wrong upstream secret: the client's own key
    is fine, so it must get a 5xx naming the upstream, never InvalidAccessKeyId/SignatureDoesNotMatch."""
    from tests.support.moto import S3Server

    name = new_bucket(moto_server_auth)
    wrong = S3Server(moto_server_auth.endpoint, moto_server_auth.access_key, "not-the-secret")
    proxy = proxy_factory(upstream=wrong, real_bucket=name)
    s3 = proxy.client()
    for attempt in (lambda: s3.get_object(Bucket=CLIENT_BUCKET, Key="k"),
                    lambda: s3.put_object(Bucket=CLIENT_BUCKET, Key="k", Body=b"x"),
                    lambda: s3.get_object_tagging(Bucket=CLIENT_BUCKET, Key="k")):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            attempt()
        assert status_of(info) == 503
        assert code_of(info) == "ServiceUnavailable"
        assert moto_server_auth.endpoint in info.value.response["Error"]["Message"]
    assert moto_server_auth.keys(name) == []
