"""Real S3 clients through the proxy: boto3 (also over TLS with aws-chunked checksum trailers), awscli,
rclone and s3cmd; byte-exact round trips checked by SHA-256, multipart of a 20 MiB file."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.proxy import CLIENT_BUCKET, CLIENTS, ssl_context

MIB = 1024 * 1024
KEY, SECRET = "rclone-key", CLIENTS["rclone-key"]
VENV_BIN = Path(sys.executable).parent


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    small, big = folder / "small.jpg", folder / "big.mp4"
    small.write_bytes(os.urandom(300_000))
    big.write_bytes(os.urandom(20 * MIB + 17))
    return {"small": small, "big": big}


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, f"{argv[:3]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def check_upstream(proxy, key: str, path: Path) -> None:
    assert sha(proxy.upstream.get(proxy.real_bucket, key)) == sha(path.read_bytes())


def test_boto3(proxy, files, tmp_path: Path) -> None:
    s3 = proxy.client(KEY)
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=4)
    s3.upload_file(str(files["big"]), CLIENT_BUCKET, "boto3/big.mp4", Config=transfer)
    s3.upload_file(str(files["small"]), CLIENT_BUCKET, "boto3/small.jpg")
    check_upstream(proxy, "boto3/big.mp4", files["big"])
    out = tmp_path / "back.mp4"
    s3.download_file(CLIENT_BUCKET, "boto3/big.mp4", str(out), Config=transfer)
    assert sha(out.read_bytes()) == sha(files["big"].read_bytes())
    ranged = s3.get_object(Bucket=CLIENT_BUCKET, Key="boto3/small.jpg", Range="bytes=1000-1999")["Body"].read()
    assert ranged == files["small"].read_bytes()[1000:2000]
    assert s3.head_object(Bucket=CLIENT_BUCKET, Key="boto3/small.jpg")["ContentLength"] == 300_000
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=CLIENT_BUCKET, Prefix="boto3/")["Contents"]]
    assert keys == ["boto3/big.mp4", "boto3/small.jpg"]
    s3.delete_object(Bucket=CLIENT_BUCKET, Key="boto3/small.jpg")
    assert proxy.upstream_keys("boto3/") == ["boto3/big.mp4"]


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
    check_upstream(proxy, "tls/small.jpg", files["small"])
    metrics = httpx.get(f"{proxy.endpoint}/metrics", verify=ssl_context(cert)).text
    assert 'bucketguard_aws_chunked_bodies_total{payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER"}' in metrics
    # The object stored upstream is the plain payload, without aws-chunked framing or encoding.
    head = proxy.upstream.client().head_object(Bucket=proxy.real_bucket, Key="tls/small.jpg")
    assert head["ContentLength"] == 300_000
    assert "aws-chunked" not in head.get("ContentEncoding", "")


def test_awscli(proxy, files, tmp_path: Path) -> None:
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\ns3 =\n    multipart_threshold = 5MB\n"
                          "    multipart_chunksize = 5MB\n    addressing_style = path\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_CONFIG_FILE": str(aws_config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    aws = [str(VENV_BIN / "aws"), "--endpoint-url", proxy.endpoint]
    run([*aws, "s3", "cp", str(files["big"]), f"s3://{CLIENT_BUCKET}/cli/big.mp4"], env)
    run([*aws, "s3", "cp", str(files["small"]), f"s3://{CLIENT_BUCKET}/cli/small.jpg"], env)
    check_upstream(proxy, "cli/big.mp4", files["big"])
    back = tmp_path / "back.mp4"
    run([*aws, "s3", "cp", f"s3://{CLIENT_BUCKET}/cli/big.mp4", str(back)], env)
    assert sha(back.read_bytes()) == sha(files["big"].read_bytes())
    ranged = tmp_path / "range.bin"
    run([*aws, "s3api", "get-object", "--bucket", CLIENT_BUCKET, "--key", "cli/small.jpg", "--range",
         "bytes=10-29", str(ranged)], env)
    assert ranged.read_bytes() == files["small"].read_bytes()[10:30]
    assert '"ContentLength": 300000' in run([*aws, "s3api", "head-object", "--bucket", CLIENT_BUCKET, "--key",
                                             "cli/small.jpg"], env)
    listing = run([*aws, "s3", "ls", f"s3://{CLIENT_BUCKET}/cli/"], env)
    assert "big.mp4" in listing and "small.jpg" in listing
    run([*aws, "s3", "rm", f"s3://{CLIENT_BUCKET}/cli/small.jpg"], env)
    assert proxy.upstream_keys("cli/") == ["cli/big.mp4"]


def test_rclone(proxy, files, tmp_path: Path) -> None:
    rclone = shutil.which("rclone")
    assert rclone, "rclone must be installed (scripts/bootstrap dev installs Debian's rclone)"
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update({"RCLONE_CONFIG": str(tmp_path / "rclone.conf"), "RCLONE_CONFIG_BG_TYPE": "s3",
                "RCLONE_CONFIG_BG_PROVIDER": "Other", "RCLONE_CONFIG_BG_ENDPOINT": proxy.endpoint,
                "RCLONE_CONFIG_BG_ACCESS_KEY_ID": KEY, "RCLONE_CONFIG_BG_SECRET_ACCESS_KEY": SECRET,
                "RCLONE_CONFIG_BG_REGION": "us-east-1", "RCLONE_CONFIG_BG_FORCE_PATH_STYLE": "true",
                "RCLONE_CONFIG_BG_NO_CHECK_BUCKET": "true"})
    flags = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--retries", "1", "--low-level-retries", "1"]
    run([rclone, "copyto", str(files["big"]), f"bg:{CLIENT_BUCKET}/rc/big.mp4", *flags], env)
    run([rclone, "copyto", str(files["small"]), f"bg:{CLIENT_BUCKET}/rc/small.jpg", *flags], env)
    check_upstream(proxy, "rc/big.mp4", files["big"])
    back = tmp_path / "back.mp4"
    run([rclone, "copyto", f"bg:{CLIENT_BUCKET}/rc/big.mp4", str(back)], env)
    assert sha(back.read_bytes()) == sha(files["big"].read_bytes())
    part = subprocess.run([rclone, "cat", f"bg:{CLIENT_BUCKET}/rc/small.jpg", "--offset", "100", "--count", "50"],
                          capture_output=True, env=env, timeout=60, check=True).stdout
    assert part == files["small"].read_bytes()[100:150]
    listing = run([rclone, "lsf", f"bg:{CLIENT_BUCKET}/rc/"], env)
    assert sorted(listing.split()) == ["big.mp4", "small.jpg"]
    run([rclone, "deletefile", f"bg:{CLIENT_BUCKET}/rc/small.jpg"], env)
    assert proxy.upstream_keys("rc/") == ["rc/big.mp4"]


def test_s3cmd(proxy, files, tmp_path: Path) -> None:
    host = proxy.endpoint.removeprefix("http://")
    config = tmp_path / "s3cfg"
    config.write_text(f"[default]\naccess_key = {KEY}\nsecret_key = {SECRET}\nhost_base = {host}\n"
                      f"host_bucket = {host}\nuse_https = False\nsignature_v2 = False\n"
                      "bucket_location = us-east-1\n")
    s3cmd = [sys.executable, str(VENV_BIN / "s3cmd"), "-c", str(config), "--bucket-location=us-east-1"]
    run([*s3cmd, "put", "--multipart-chunk-size-mb=5", str(files["big"]), f"s3://{CLIENT_BUCKET}/s3cmd/big.mp4"])
    run([*s3cmd, "put", str(files["small"]), f"s3://{CLIENT_BUCKET}/s3cmd/small.jpg"])
    check_upstream(proxy, "s3cmd/big.mp4", files["big"])
    check_upstream(proxy, "s3cmd/small.jpg", files["small"])
    back = tmp_path / "back.mp4"
    run([*s3cmd, "get", f"s3://{CLIENT_BUCKET}/s3cmd/big.mp4", str(back)])
    assert sha(back.read_bytes()) == sha(files["big"].read_bytes())
    listing = run([*s3cmd, "ls", f"s3://{CLIENT_BUCKET}/s3cmd/"])
    assert "s3cmd/big.mp4" in listing and "s3cmd/small.jpg" in listing
    run([*s3cmd, "del", f"s3://{CLIENT_BUCKET}/s3cmd/small.jpg"])
    assert proxy.upstream_keys("s3cmd/") == ["s3cmd/big.mp4"]
