"""Nothing caught is exposed, also in a versioned bucket: when `bucketguard scan` moves a hit to quarantine,
deleting it from a bucket with versioning on only adds a delete marker, and the caught bytes stay in an older
version. Neither the proxy (GET ?versionId, ListObjectVersions) nor the bucket itself may keep serving them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.proxy import CLIENT_BUCKET

POLICY = 'on_non_media = "allow"\non_undecodable = "allow"\non_unavailable = "allow"\n'


def test_a_scanned_hit_leaves_no_readable_version(proxy_factory, tmp_path: Path) -> None:
    from proxy.screening.testimage import generate_png

    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    proxy = proxy_factory(pipeline=True, screening=f'policy = "{policy}"')
    direct = proxy.upstream.client()
    direct.put_bucket_versioning(Bucket=proxy.real_bucket, VersioningConfiguration={"Status": "Enabled"})
    image = generate_png()
    version = direct.put_object(Bucket=proxy.real_bucket, Key="old/t.png", Body=image)["VersionId"]  # pre-proxy
    scan = subprocess.run([str(Path(sys.executable).parent / "bucketguard"), "scan", "--config",
                           str(proxy.config_path), "--bucket", CLIENT_BUCKET, "--no-progress"],
                          capture_output=True, text=True, timeout=180)
    assert scan.returncode == 0 and "quarantined\t1" in scan.stdout, scan.stdout + scan.stderr
    assert direct.list_objects_v2(Bucket=proxy.real_bucket).get("Contents", []) == []  # the current one is gone

    s3 = proxy.client("rclone-key")
    try:
        served = s3.get_object(Bucket=CLIENT_BUCKET, Key="old/t.png", VersionId=version)["Body"].read()
    except ClientError as error:
        served = error.response["Error"]["Code"].encode()
    assert served != image, "the proxy serves the quarantined bytes by versionId"
    listed = s3.list_object_versions(Bucket=CLIENT_BUCKET).get("Versions", [])
    assert [v for v in listed if v["Key"] == "old/t.png"] == [], "the proxy lists the caught version"
    left = direct.list_object_versions(Bucket=proxy.real_bucket).get("Versions", [])
    assert left == [], f"the bucket still holds the caught bytes in version(s) {[v['VersionId'] for v in left]}"


def test_unversioned_control(proxy_factory, tmp_path: Path) -> None:
    """The same scan on an unversioned bucket leaves nothing behind (the control for the test above)."""
    from proxy.screening.testimage import generate_png

    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    proxy = proxy_factory(pipeline=True, screening=f'policy = "{policy}"')
    direct = proxy.upstream.client()
    direct.put_object(Bucket=proxy.real_bucket, Key="old/t.png", Body=generate_png())
    scan = subprocess.run([str(Path(sys.executable).parent / "bucketguard"), "scan", "--config",
                           str(proxy.config_path), "--bucket", CLIENT_BUCKET, "--no-progress"],
                          capture_output=True, text=True, timeout=180)
    assert scan.returncode == 0 and "quarantined\t1" in scan.stdout, scan.stdout + scan.stderr
    assert proxy.upstream_keys() == []
    with pytest.raises(ClientError):
        proxy.client("rclone-key").get_object(Bucket=CLIENT_BUCKET, Key="old/t.png")
