"""Real clients through the pass-through proxy in front of Ceph RGW (tests/test_real_clients.py has the full
matrix in front of moto): awscli and rclone with default settings create their own bucket, upload in parts,
copy, read the ACL and list; the bytes in RGW are checked by SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.proxy import CLIENTS

KEY = "rclone-key"
VENV_BIN = Path(sys.executable).parent
MIB = 1024 * 1024


def run(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, f"{argv[:4]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_awscli_and_rclone_in_front_of_rgw(rgw_server, conformance_proxies, tmp_path: Path) -> None:
    proxy = conformance_proxies("rgw", "passthrough")
    data = tmp_path / "video.mp4"
    data.write_bytes(os.urandom(9 * MIB + 3))  # over awscli's 8 MiB multipart threshold
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": CLIENTS[KEY],
           "AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    aws = [str(VENV_BIN / "aws"), "--endpoint-url", proxy.endpoint]
    run([*aws, "s3", "mb", "s3://cf-awscli-rgw"], env)
    run([*aws, "s3", "cp", str(data), "s3://cf-awscli-rgw/video.mp4"], env)
    run([*aws, "s3", "cp", "s3://cf-awscli-rgw/video.mp4", "s3://cf-awscli-rgw/copy.mp4"], env)
    acl = json.loads(run([*aws, "s3api", "get-object-acl", "--bucket", "cf-awscli-rgw", "--key", "video.mp4"], env))
    assert [grant["Permission"] for grant in acl["Grants"]] == ["FULL_CONTROL"]
    listing = run([*aws, "s3", "ls", "s3://cf-awscli-rgw/"], env)
    assert "video.mp4" in listing and "copy.mp4" in listing
    for key in ("video.mp4", "copy.mp4"):
        assert sha(rgw_server.get("cf-awscli-rgw", key)) == sha(data.read_bytes())
    head = rgw_server.client().head_object(Bucket="cf-awscli-rgw", Key="video.mp4")
    assert head["ETag"].endswith('-2"')  # it went up in two parts

    rclone = shutil.which("rclone")
    assert rclone, "rclone must be installed (scripts/bootstrap dev installs Debian's rclone)"
    renv = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    renv.update({"RCLONE_CONFIG": str(tmp_path / "rclone.conf"), "RCLONE_CONFIG_BG_TYPE": "s3",
                 "RCLONE_CONFIG_BG_PROVIDER": "Other", "RCLONE_CONFIG_BG_ENDPOINT": proxy.endpoint,
                 "RCLONE_CONFIG_BG_ACCESS_KEY_ID": KEY, "RCLONE_CONFIG_BG_SECRET_ACCESS_KEY": CLIENTS[KEY]})
    run([rclone, "copyto", str(data), "bg:cf-rclone-rgw/video.mp4", "--s3-upload-cutoff", "5M",
         "--s3-chunk-size", "5M", "--retries", "1"], renv)  # the bucket does not exist yet: rclone creates it
    assert run([rclone, "lsf", "bg:cf-rclone-rgw/"], renv).split() == ["video.mp4"]
    run([rclone, "check", str(tmp_path), "bg:cf-rclone-rgw/", "--one-way", "--include", "video.mp4"], renv)
    assert sha(rgw_server.get("cf-rclone-rgw", "video.mp4")) == sha(data.read_bytes())
