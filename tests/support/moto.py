"""Real S3 servers on loopback for the test suite: moto's server, plain and with signature checking on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

MOTO_KEY = "testing"
MOTO_SECRET = "testing"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    access_key: str = MOTO_KEY
    secret_key: str = MOTO_SECRET
    signature_checking: bool = False

    def client(self, **config: object):  # boto3 S3 client straight to this server
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config))

    def reset(self) -> None:
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def multipart_uploads(self, bucket: str) -> list[dict]:
        return self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _wait_until_listening(endpoint: str, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"S3 server exited with {process.returncode}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"S3 server at {endpoint} did not start")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server in this process's threads, accepting any credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    _wait_until_listening(endpoint)
    yield S3Server(endpoint)
    server.stop()


@pytest.fixture(scope="session")
def moto_server_auth() -> Iterator[S3Server]:
    """moto's server in a subprocess with signature checking on: only a key made in its IAM is accepted.

    moto has no built-in root keys: with authentication on it accepts only access keys that exist in its
    IAM (or STS assumed-role keys), and checks the SigV4 signature with the secret stored there. The env var
    INITIAL_NO_AUTH_ACTION_COUNT=3 lets exactly the three IAM calls below through unchecked; they create a
    user with an s3:* policy and an access key (the server's `access_key`/`secret_key`). Every later request
    must be signed with that key. The env var is read by the server process only, so it cannot leak into
    the in-process `moto_server`.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_listening(endpoint, process)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_SECRET)
        iam.create_user(UserName="bucketguard")
        iam.put_user_policy(UserName="bucketguard", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }))
        key = iam.create_access_key(UserName="bucketguard")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], signature_checking=True)
        _assert_signatures_checked(server)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def _assert_signatures_checked(server: S3Server) -> None:
    """Guard for every user of the fixture: a wrong secret must already be refused."""
    wrong = S3Server(server.endpoint, server.access_key, "wrong-secret").client()
    try:
        wrong.list_buckets()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "SignatureDoesNotMatch":
            return
        raise
    raise RuntimeError("moto accepted a request signed with a wrong secret: authentication is not on")
