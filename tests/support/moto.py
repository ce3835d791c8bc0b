"""Real S3 servers on loopback for the test suite: moto's server, plain and with signature checking on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from proxy.demo.servers import MOTO_KEY, MOTO_SECRET, S3Server, free_port, start_moto_process, start_moto_thread

__all__ = ["MOTO_KEY", "MOTO_SECRET", "S3Server", "free_port", "moto_server", "moto_server_auth"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server in this process's threads, accepting any credentials."""
    server, stop = start_moto_thread()
    yield server
    stop()


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
    moto = start_moto_process(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        endpoint = moto.server.endpoint
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
        moto.stop()


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
