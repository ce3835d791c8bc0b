"""A copy is screened like an upload: bytes that reached the bucket without the proxy (uploaded before
bucketguard, or by another tool) cannot be laundered into a new key by CopyObject or UploadPartCopy. Judged by
the real bucket on moto afterwards."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.support.proxy import CLIENT_BUCKET

POLICY = 'on_non_media = "allow"\non_undecodable = "allow"\non_unavailable = "allow"\n'


@pytest.fixture
def screened(proxy_factory, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return proxy_factory(pipeline=True, screening=f'policy = "{policy}"')


def test_copies_of_unscreened_test_image_are_refused(screened) -> None:
    from proxy.screening.testimage import generate_png

    proxy, image = screened, generate_png()
    direct = proxy.upstream.client()
    direct.put_object(Bucket=proxy.real_bucket, Key="old/planted.png", Body=image)  # never went through the proxy
    s3 = proxy.client("rclone-key")
    source = {"Bucket": CLIENT_BUCKET, "Key": "old/planted.png"}
    with pytest.raises(ClientError) as refusal:
        s3.copy_object(Bucket=CLIENT_BUCKET, Key="new/copy.png", CopySource=source)
    assert refusal.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as refusal:
        s3.copy_object(Bucket=CLIENT_BUCKET, Key="new/replaced.png", CopySource=source, MetadataDirective="REPLACE",
                       ContentType="text/plain")
    assert refusal.value.response["Error"]["Code"] == "AccessDenied"

    upload = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="new/assembled.png")["UploadId"]
    part = s3.upload_part_copy(Bucket=CLIENT_BUCKET, Key="new/assembled.png", UploadId=upload, PartNumber=1,
                               CopySource=source)
    with pytest.raises(ClientError) as refusal:
        s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="new/assembled.png", UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                 "ETag": part["CopyPartResult"]["ETag"]}]})
    assert refusal.value.response["Error"]["Code"] == "AccessDenied"

    # Nothing new landed, staging included; the planted original is the operator's (a scan finds it).
    assert proxy.upstream_keys() == ["old/planted.png"]
    assert direct.list_multipart_uploads(Bucket=proxy.real_bucket).get("Uploads", []) == []
    clean = b"plain bytes, screened on the way in"
    s3.put_object(Bucket=CLIENT_BUCKET, Key="new/clean.bin", Body=clean)
    s3.copy_object(Bucket=CLIENT_BUCKET, Key="new/clean-copy.bin",
                   CopySource={"Bucket": CLIENT_BUCKET, "Key": "new/clean.bin"})
    assert proxy.upstream.get(proxy.real_bucket, "new/clean-copy.bin") == clean


def test_a_source_swapped_behind_the_proxy_is_screened_again(screened) -> None:
    """A clean verdict belongs to bytes, not to a key: after the source key's bytes are replaced directly in
    the bucket (by the test image), a copy through the proxy is screened again and refused."""
    from proxy.screening.testimage import generate_png

    proxy = screened
    s3 = proxy.client("rclone-key")
    source = {"Bucket": CLIENT_BUCKET, "Key": "a.png"}
    s3.put_object(Bucket=CLIENT_BUCKET, Key="a.png", Body=b"clean bytes through the proxy")
    s3.copy_object(Bucket=CLIENT_BUCKET, Key="warm.png", CopySource=source)  # the clean verdict is now known
    proxy.upstream.client().put_object(Bucket=proxy.real_bucket, Key="a.png", Body=generate_png())
    with pytest.raises(ClientError) as refusal:
        s3.copy_object(Bucket=CLIENT_BUCKET, Key="b.png", CopySource=source)
    assert refusal.value.response["Error"]["Code"] == "AccessDenied"
    assert proxy.upstream_keys() == ["a.png", "warm.png"]
