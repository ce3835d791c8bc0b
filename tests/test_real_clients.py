"""Real S3 clients through the proxy, each with its default settings: boto3 (also over TLS with aws-chunked
checksum trailers), awscli, rclone, s3cmd, minio-py and the AWS SDK for JavaScript v3. Each puts, gets (whole
and a range), heads, lists, copies, deletes one and several objects and uploads a 20 MiB file in parts; the
bytes are checked by SHA-256 in the real bucket, and the built-in test image is refused by each (and absent
from the real bucket)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.proxy import CLIENT_BUCKET, CLIENTS, RunningProxy, ssl_context

MIB = 1024 * 1024
KEY, SECRET = "rclone-key", CLIENTS["rclone-key"]
VENV_BIN = Path(sys.executable).parent
JS_DIR = Path(__file__).parent / "js"
pytestmark = pytest.mark.slow  # six clients, each moving 20 MiB twice
#: General S3 use: bytes that are no media land (pict-rs' default refuses them); no detector rules, so what is
#: refused is what the built-in steps catch: the test image.
CLIENT_POLICY = 'on_non_media = "allow"\non_undecodable = "allow"\non_unavailable = "allow"\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    small, big, test_image = folder / "small.jpg", folder / "big.mp4", folder / "test.png"
    small.write_bytes(os.urandom(300_000))
    big.write_bytes(os.urandom(20 * MIB + 17))
    with test_image.open("wb") as handle:  # what an operator runs
        subprocess.run([str(VENV_BIN / "bucketguard"), "test-image"], stdout=handle, check=True, timeout=60)
    return {"small": small, "big": big, "test": test_image}


@pytest.fixture
def screened_proxy(proxy_factory, tmp_path: Path) -> RunningProxy:
    """The proxy with its real screening pipeline (bucket `pictrs` mapped to a fresh bucket on moto)."""
    policy = tmp_path / "policy.toml"
    policy.write_text(CLIENT_POLICY)
    return proxy_factory(pipeline=True, screening=f'policy = "{policy}"')


def run(argv: list[str], env: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    if ok:
        assert result.returncode == 0, f"{argv[:4]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def landed(proxy: RunningProxy, key: str, path: Path) -> None:
    """The real bucket holds exactly the file's bytes under `key`."""
    assert sha(proxy.upstream.get(proxy.real_bucket, key)) == sha(path.read_bytes()), key


def operations(proxy: RunningProxy) -> dict[str, int]:
    """Successful (2xx) requests per S3 operation, from the proxy's own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(httpx.get(f"{proxy.endpoint}/metrics").text):
        for sample in family.samples:
            if sample.name == "bucketguard_requests_total" and sample.labels["status"].startswith("2"):
                counts[sample.labels["operation"]] = counts.get(sample.labels["operation"], 0) + int(sample.value)
    return counts


def used_multipart_and_copy(proxy: RunningProxy) -> None:
    """The 20 MiB file really went up in parts, and the copy was a server-side CopyObject."""
    seen = operations(proxy)
    assert seen.get("CompleteMultipartUpload", 0) >= 1 and seen.get("UploadPart", 0) >= 2, seen
    assert seen.get("CopyObject", 0) >= 1, seen


def refused(proxy: RunningProxy, prefix: str) -> None:
    """The test image is nowhere in the real bucket (staging prefixes included)."""
    assert not [key for key in proxy.upstream_keys() if key.endswith("test.png")]
    assert proxy.upstream_keys(prefix + "test") == []


def test_boto3(screened_proxy, files, tmp_path: Path) -> None:
    proxy = screened_proxy
    s3 = proxy.client(KEY)
    s3.upload_file(str(files["big"]), CLIENT_BUCKET, "boto3/big.mp4")  # default: 8 MiB parts
    s3.upload_file(str(files["small"]), CLIENT_BUCKET, "boto3/small.jpg")
    landed(proxy, "boto3/big.mp4", files["big"])
    landed(proxy, "boto3/small.jpg", files["small"])
    out = tmp_path / "back.mp4"
    s3.download_file(CLIENT_BUCKET, "boto3/big.mp4", str(out))
    assert sha(out.read_bytes()) == sha(files["big"].read_bytes())
    ranged = s3.get_object(Bucket=CLIENT_BUCKET, Key="boto3/small.jpg", Range="bytes=1000-1999")["Body"].read()
    assert ranged == files["small"].read_bytes()[1000:2000]
    assert s3.head_object(Bucket=CLIENT_BUCKET, Key="boto3/small.jpg")["ContentLength"] == 300_000
    s3.copy_object(Bucket=CLIENT_BUCKET, Key="boto3/copy.jpg", CopySource={"Bucket": CLIENT_BUCKET,
                                                                          "Key": "boto3/small.jpg"})
    landed(proxy, "boto3/copy.jpg", files["small"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=CLIENT_BUCKET, Prefix="boto3/")["Contents"]]
    assert keys == ["boto3/big.mp4", "boto3/copy.jpg", "boto3/small.jpg"]
    s3.delete_object(Bucket=CLIENT_BUCKET, Key="boto3/small.jpg")
    for name in ("d1", "d2"):
        s3.put_object(Bucket=CLIENT_BUCKET, Key=f"boto3/{name}", Body=name.encode())
    deleted = s3.delete_objects(Bucket=CLIENT_BUCKET, Delete={"Objects": [{"Key": "boto3/d1"}, {"Key": "boto3/d2"}]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["boto3/d1", "boto3/d2"]
    assert proxy.upstream_keys("boto3/") == ["boto3/big.mp4", "boto3/copy.jpg"]
    with pytest.raises(S3UploadFailedError, match="AccessDenied"):
        s3.upload_file(str(files["test"]), CLIENT_BUCKET, "boto3/test.png")
    with pytest.raises(ClientError) as refusal:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="boto3/test.png", Body=files["test"].read_bytes())
    assert refusal.value.response["Error"]["Code"] == "AccessDenied"
    used_multipart_and_copy(proxy)
    refused(proxy, "boto3/")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_boto3_over_tls_sends_aws_chunked_with_checksum_trailer(proxy_factory, files, tmp_path: Path) -> None:
    """boto3 >= 1.36 behind TLS streams PutObject as STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC32."""
    cert, key = _self_signed(tmp_path)
    proxy = proxy_factory(tls=(cert, key))
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                      aws_secret_access_key=SECRET, verify=str(cert),
                      config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_supported"))
    with files["small"].open("rb") as handle:
        s3.put_object(Bucket=CLIENT_BUCKET, Key="tls/small.jpg", Body=handle)
    landed(proxy, "tls/small.jpg", files["small"])
    metrics = httpx.get(f"{proxy.endpoint}/metrics", verify=ssl_context(cert)).text
    assert 'bucketguard_aws_chunked_bodies_total{payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER"}' in metrics
    # The object stored upstream is the plain payload, without aws-chunked framing or encoding.
    head = proxy.upstream.client().head_object(Bucket=proxy.real_bucket, Key="tls/small.jpg")
    assert head["ContentLength"] == 300_000
    assert "aws-chunked" not in head.get("ContentEncoding", "")


def test_awscli(screened_proxy, files, tmp_path: Path) -> None:
    proxy = screened_proxy
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\n")  # defaults otherwise: 8 MiB multipart threshold
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_CONFIG_FILE": str(aws_config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    aws = [str(VENV_BIN / "aws"), "--endpoint-url", proxy.endpoint]
    run([*aws, "s3", "cp", str(files["big"]), f"s3://{CLIENT_BUCKET}/cli/big.mp4"], env)
    run([*aws, "s3", "cp", str(files["small"]), f"s3://{CLIENT_BUCKET}/cli/small.jpg"], env)
    landed(proxy, "cli/big.mp4", files["big"])
    landed(proxy, "cli/small.jpg", files["small"])
    back = tmp_path / "back.mp4"
    run([*aws, "s3", "cp", f"s3://{CLIENT_BUCKET}/cli/big.mp4", str(back)], env)
    assert sha(back.read_bytes()) == sha(files["big"].read_bytes())
    ranged = tmp_path / "range.bin"
    run([*aws, "s3api", "get-object", "--bucket", CLIENT_BUCKET, "--key", "cli/small.jpg", "--range",
         "bytes=10-29", str(ranged)], env)
    assert ranged.read_bytes() == files["small"].read_bytes()[10:30]
    head = json.loads(run([*aws, "s3api", "head-object", "--bucket", CLIENT_BUCKET, "--key", "cli/small.jpg"],
                          env).stdout)
    assert head["ContentLength"] == 300_000
    acl = json.loads(run([*aws, "s3api", "get-object-acl", "--bucket", CLIENT_BUCKET, "--key", "cli/small.jpg"],
                         env).stdout)
    assert [grant["Permission"] for grant in acl["Grants"]] == ["FULL_CONTROL"]
    run([*aws, "s3api", "put-object-tagging", "--bucket", CLIENT_BUCKET, "--key", "cli/small.jpg", "--tagging",
         '{"TagSet": [{"Key": "state", "Value": "ok"}]}'], env)
    tags = json.loads(run([*aws, "s3api", "get-object-tagging", "--bucket", CLIENT_BUCKET, "--key", "cli/small.jpg"],
                          env).stdout)
    assert tags["TagSet"] == [{"Key": "state", "Value": "ok"}]
    landed(proxy, "cli/small.jpg", files["small"])  # reading the ACL never touched the bytes
    run([*aws, "s3", "cp", f"s3://{CLIENT_BUCKET}/cli/small.jpg", f"s3://{CLIENT_BUCKET}/cli/copy.jpg"], env)
    landed(proxy, "cli/copy.jpg", files["small"])
    listing = run([*aws, "s3", "ls", f"s3://{CLIENT_BUCKET}/cli/"], env).stdout
    assert "big.mp4" in listing and "small.jpg" in listing and "copy.jpg" in listing
    run([*aws, "s3", "rm", f"s3://{CLIENT_BUCKET}/cli/small.jpg"], env)
    for name in ("d1", "d2"):
        run([*aws, "s3api", "put-object", "--bucket", CLIENT_BUCKET, "--key", f"cli/{name}", "--body",
             str(files["small"])], env)
    deleted = json.loads(run([*aws, "s3api", "delete-objects", "--bucket", CLIENT_BUCKET, "--delete",
                              '{"Objects": [{"Key": "cli/d1"}, {"Key": "cli/d2"}]}'], env).stdout)
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["cli/d1", "cli/d2"]
    assert proxy.upstream_keys("cli/") == ["cli/big.mp4", "cli/copy.jpg"]
    refusal = run([*aws, "s3", "cp", str(files["test"]), f"s3://{CLIENT_BUCKET}/cli/test.png"], env, ok=False)
    assert refusal.returncode != 0 and "AccessDenied" in refusal.stderr, refusal.stderr
    used_multipart_and_copy(proxy)
    refused(proxy, "cli/")


def test_rclone(screened_proxy, files, tmp_path: Path) -> None:
    """rclone's default S3 config for another provider: it creates (checks) the bucket before uploading.
    Only the upload cutoff is lowered, so that the 20 MiB file goes up in parts (rclone's default is 200 MiB)."""
    proxy = screened_proxy
    rclone = shutil.which("rclone")
    assert rclone, "rclone must be installed (scripts/bootstrap dev installs Debian's rclone)"
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update({"RCLONE_CONFIG": str(tmp_path / "rclone.conf"), "RCLONE_CONFIG_BG_TYPE": "s3",
                "RCLONE_CONFIG_BG_PROVIDER": "Other", "RCLONE_CONFIG_BG_ENDPOINT": proxy.endpoint,
                "RCLONE_CONFIG_BG_ACCESS_KEY_ID": KEY, "RCLONE_CONFIG_BG_SECRET_ACCESS_KEY": SECRET})
    flags = ["--retries", "1", "--low-level-retries", "1"]
    run([rclone, "copyto", str(files["big"]), f"bg:{CLIENT_BUCKET}/rc/big.mp4", "--s3-upload-cutoff", "5M",
         "--s3-chunk-size", "5M", *flags], env)
    run([rclone, "copyto", str(files["small"]), f"bg:{CLIENT_BUCKET}/rc/small.jpg", *flags], env)
    landed(proxy, "rc/big.mp4", files["big"])
    landed(proxy, "rc/small.jpg", files["small"])
    back = tmp_path / "back.mp4"
    run([rclone, "copyto", f"bg:{CLIENT_BUCKET}/rc/big.mp4", str(back), *flags], env)
    assert sha(back.read_bytes()) == sha(files["big"].read_bytes())
    part = subprocess.run([rclone, "cat", f"bg:{CLIENT_BUCKET}/rc/small.jpg", "--offset", "100", "--count", "50"],
                          capture_output=True, env=env, timeout=60, check=True).stdout
    assert part == files["small"].read_bytes()[100:150]
    size = json.loads(run([rclone, "size", "--json", f"bg:{CLIENT_BUCKET}/rc/small.jpg"], env).stdout)
    assert size["bytes"] == 300_000
    run([rclone, "copyto", f"bg:{CLIENT_BUCKET}/rc/small.jpg", f"bg:{CLIENT_BUCKET}/rc/copy.jpg", *flags], env)
    landed(proxy, "rc/copy.jpg", files["small"])
    listing = run([rclone, "lsf", f"bg:{CLIENT_BUCKET}/rc/"], env).stdout
    assert sorted(listing.split()) == ["big.mp4", "copy.jpg", "small.jpg"]
    run([rclone, "deletefile", f"bg:{CLIENT_BUCKET}/rc/small.jpg"], env)
    for name in ("d1", "d2"):
        run([rclone, "copyto", str(files["small"]), f"bg:{CLIENT_BUCKET}/rc/del/{name}", *flags], env)
    run([rclone, "delete", f"bg:{CLIENT_BUCKET}/rc/del/", *flags], env)
    assert proxy.upstream_keys("rc/") == ["rc/big.mp4", "rc/copy.jpg"]
    assert operations(proxy).get("CreateBucket", 0) >= 1  # rclone's default: make sure the bucket exists
    refusal = run([rclone, "copyto", str(files["test"]), f"bg:{CLIENT_BUCKET}/rc/test.png", *flags], env, ok=False)
    assert refusal.returncode != 0 and "AccessDenied" in refusal.stderr, refusal.stderr
    used_multipart_and_copy(proxy)
    refused(proxy, "rc/")


def test_s3cmd(screened_proxy, files, tmp_path: Path) -> None:
    """s3cmd with only its endpoint and keys configured (15 MiB parts by default); `info` reads the ACL."""
    proxy = screened_proxy
    host = proxy.endpoint.removeprefix("http://")
    config = tmp_path / "s3cfg"
    config.write_text(f"[default]\naccess_key = {KEY}\nsecret_key = {SECRET}\nhost_base = {host}\n"
                      f"host_bucket = {host}\nuse_https = False\n")
    s3cmd = [sys.executable, str(VENV_BIN / "s3cmd"), "-c", str(config)]
    run([*s3cmd, "put", str(files["big"]), f"s3://{CLIENT_BUCKET}/s3cmd/big.mp4"])
    run([*s3cmd, "put", str(files["small"]), f"s3://{CLIENT_BUCKET}/s3cmd/small.jpg"])
    landed(proxy, "s3cmd/big.mp4", files["big"])
    landed(proxy, "s3cmd/small.jpg", files["small"])
    back = tmp_path / "back.mp4"
    run([*s3cmd, "get", f"s3://{CLIENT_BUCKET}/s3cmd/big.mp4", str(back)])
    assert sha(back.read_bytes()) == sha(files["big"].read_bytes())
    info = run([*s3cmd, "info", f"s3://{CLIENT_BUCKET}/s3cmd/small.jpg"]).stdout
    assert "300000" in info and "ACL:" in info, info
    bucket_info = run([*s3cmd, "info", f"s3://{CLIENT_BUCKET}"]).stdout
    assert f"s3://{CLIENT_BUCKET}/" in bucket_info and "Location:" in bucket_info, bucket_info
    landed(proxy, "s3cmd/small.jpg", files["small"])
    run([*s3cmd, "cp", f"s3://{CLIENT_BUCKET}/s3cmd/small.jpg", f"s3://{CLIENT_BUCKET}/s3cmd/copy.jpg"])
    landed(proxy, "s3cmd/copy.jpg", files["small"])
    listing = run([*s3cmd, "ls", f"s3://{CLIENT_BUCKET}/s3cmd/"]).stdout
    assert all(f"s3cmd/{name}" in listing for name in ("big.mp4", "small.jpg", "copy.jpg"))
    run([*s3cmd, "del", f"s3://{CLIENT_BUCKET}/s3cmd/small.jpg"])
    for name in ("d1", "d2"):
        run([*s3cmd, "put", str(files["small"]), f"s3://{CLIENT_BUCKET}/s3cmd/del/{name}"])
    run([*s3cmd, "del", "--recursive", f"s3://{CLIENT_BUCKET}/s3cmd/del/"])  # one DeleteObjects request
    assert proxy.upstream_keys("s3cmd/") == ["s3cmd/big.mp4", "s3cmd/copy.jpg"]
    refusal = run([*s3cmd, "put", str(files["test"]), f"s3://{CLIENT_BUCKET}/s3cmd/test.png"], ok=False)
    assert refusal.returncode != 0 and "AccessDenied" in refusal.stderr + refusal.stdout, refusal.stderr
    used_multipart_and_copy(proxy)
    refused(proxy, "s3cmd/")


def test_minio(screened_proxy, files, tmp_path: Path) -> None:
    from minio import Minio
    from minio.commonconfig import CopySource
    from minio.deleteobjects import DeleteObject
    from minio.error import S3Error

    proxy = screened_proxy
    client = Minio(proxy.endpoint.removeprefix("http://"), access_key=KEY, secret_key=SECRET, secure=False)
    client.fput_object(CLIENT_BUCKET, "minio/big.mp4", str(files["big"]))  # parts of 5 MiB and more
    client.fput_object(CLIENT_BUCKET, "minio/small.jpg", str(files["small"]))
    landed(proxy, "minio/big.mp4", files["big"])
    landed(proxy, "minio/small.jpg", files["small"])
    back = tmp_path / "back.mp4"
    client.fget_object(CLIENT_BUCKET, "minio/big.mp4", str(back))
    assert sha(back.read_bytes()) == sha(files["big"].read_bytes())
    response = client.get_object(CLIENT_BUCKET, "minio/small.jpg", offset=5, length=20)
    try:
        assert response.read() == files["small"].read_bytes()[5:25]
    finally:
        response.close()
        response.release_conn()
    assert client.stat_object(CLIENT_BUCKET, "minio/small.jpg").size == 300_000
    client.copy_object(CLIENT_BUCKET, "minio/copy.jpg", CopySource(CLIENT_BUCKET, "minio/small.jpg"))
    landed(proxy, "minio/copy.jpg", files["small"])
    names = sorted(o.object_name for o in client.list_objects(CLIENT_BUCKET, prefix="minio/"))
    assert names == ["minio/big.mp4", "minio/copy.jpg", "minio/small.jpg"]
    client.remove_object(CLIENT_BUCKET, "minio/small.jpg")
    for name in ("d1", "d2"):
        client.fput_object(CLIENT_BUCKET, f"minio/{name}", str(files["small"]))
    errors = list(client.remove_objects(CLIENT_BUCKET, [DeleteObject("minio/d1"), DeleteObject("minio/d2")]))
    assert errors == []
    assert proxy.upstream_keys("minio/") == ["minio/big.mp4", "minio/copy.jpg"]
    with pytest.raises(S3Error) as refusal:
        client.fput_object(CLIENT_BUCKET, "minio/test.png", str(files["test"]), content_type="image/png")
    assert refusal.value.code == "AccessDenied"
    used_multipart_and_copy(proxy)
    refused(proxy, "minio/")


def test_aws_sdk_for_javascript(screened_proxy, files) -> None:
    """@aws-sdk/client-s3 and lib-storage (tests/js, `npm ci` by scripts/bootstrap dev) on Debian's Node."""
    proxy = screened_proxy
    node = shutil.which("node")
    assert node and (JS_DIR / "node_modules" / "@aws-sdk" / "client-s3").is_dir(), \
        "Node and tests/js/node_modules are needed: scripts/bootstrap dev installs both"
    env = {**os.environ, "BG_ENDPOINT": proxy.endpoint, "BG_KEY": KEY, "BG_SECRET": SECRET,
           "BG_BUCKET": CLIENT_BUCKET, "BG_PREFIX": "js/", "BG_SMALL": str(files["small"]),
           "BG_BIG": str(files["big"]), "BG_TEST_IMAGE": str(files["test"])}
    seen = json.loads(run([node, str(JS_DIR / "clients.mjs")], env).stdout)
    small = files["small"].read_bytes()
    assert seen["bigSha256"] == sha(files["big"].read_bytes())
    assert seen["multipartProgressEvents"] >= 4  # 5 MiB parts
    assert bytes.fromhex(seen["rangeHex"]) == small[100:150]
    assert seen["contentRange"] == "bytes 100-149/300000"
    assert seen["headLength"] == 300_000
    assert seen["headETag"] == f'"{hashlib.md5(small).hexdigest()}"'
    assert seen["listed"] == ["js/big.mp4", "js/copy.jpg", "js/gone1", "js/gone2", "js/small.jpg"]
    assert seen["multiDeleted"] == ["js/gone1", "js/gone2"]
    assert seen["testImage"] == "AccessDenied 403"
    landed(proxy, "js/big.mp4", files["big"])
    landed(proxy, "js/copy.jpg", files["small"])
    assert proxy.upstream_keys("js/") == ["js/big.mp4", "js/copy.jpg"]
    used_multipart_and_copy(proxy)
    refused(proxy, "js/")
