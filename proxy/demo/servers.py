"""Loopback servers for the demo, the benchmarks and the test suite: moto's S3 server (in a thread or in its own
process), a proxy config for a local upstream, and the proxy itself served by uvicorn in a thread.

Only the demo extra is needed (moto brings boto3); nothing here imports pytest or anything under ``tests/``.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MOTO_KEY = "testing"
MOTO_SECRET = "testing"  # noqa: S105 - moto accepts any credentials; this is no secret
#: The bucket name pict-rs is given; the proxy maps it to a real bucket upstream.
CLIENT_BUCKET = "pictrs"
#: Client key pairs; all map to the one upstream identity.
CLIENTS = {"pictrs-key": "pictrs-secret-0123456789", "rclone-key": "rclone-secret-abcdef", "admin-key": "admin-sec"}
PICTRS_KEY = "pictrs-key"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """An S3 endpoint on loopback and the credentials it accepts."""

    endpoint: str
    access_key: str = MOTO_KEY
    secret_key: str = MOTO_SECRET
    signature_checking: bool = False

    def client(self, **config: Any):
        """A boto3 S3 client straight to this server (path style, no retries)."""
        import boto3
        from botocore.config import Config

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


def wait_until_listening(endpoint: str, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Wait until moto at `endpoint` answers (raises if `process` exits first or the time runs out)."""
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


def start_moto_thread() -> tuple[S3Server, Callable[[], None]]:
    """moto's S3 server in this process's threads, accepting any credentials: (server, stop)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    wait_until_listening(endpoint)
    return S3Server(endpoint), server.stop


@dataclass
class MotoProcess:
    """moto's S3 server as a child process (so it can be killed and restarted on the same port)."""

    server: S3Server
    process: subprocess.Popen
    port: int

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto_process(port: int | None = None, env: dict[str, str] | None = None,
                       log: Path | None = None) -> MotoProcess:
    """`python -m moto.server` on 127.0.0.1 (a free port unless given), waited for until it answers. Without a
    `port`, a server that exits while starting (its port taken since free_port saw it free) is started again on
    another one."""
    for attempt in range(3):
        chosen = port or free_port()
        out = log.open("ab") if log else subprocess.DEVNULL
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(chosen)],
                                   env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
        if log:
            out.close()  # the child holds its own copy
        endpoint = f"http://127.0.0.1:{chosen}"
        try:
            wait_until_listening(endpoint, process, timeout=60)
        except BaseException:
            exited = process.poll() is not None
            process.kill()
            process.wait()
            if exited and port is None and attempt < 2:
                continue
            raise
        return MotoProcess(S3Server(endpoint), process, chosen)
    raise AssertionError("unreachable")


def write_proxy_config(tmp: Path, upstream: S3Server, real_bucket: str, *, port: int = 0, extra: str = "",
                       limits: str = "", database: Path | None = None, inference: str = 'mode = "none"',
                       screening: str = "", server: str = "") -> Path:
    """A bucketguard.toml in `tmp` for a proxy in front of `upstream` (CLIENT_BUCKET -> `real_bucket`)."""
    clients = "".join(f'[[clients]]\naccess_key = "{k}"\nsecret_key = "{s}"\n' for k, s in CLIENTS.items())
    text = f"""
[server]
listen = "127.0.0.1:{port}"
base_domains = ["localhost"]
log_level = "warning"
{server}

{clients}
[upstream]
endpoint = "{upstream.endpoint}"
access_key = "{upstream.access_key}"
secret_key = "{upstream.secret_key}"
addressing = "path"

[upstream.buckets]
{CLIENT_BUCKET} = "{real_bucket}"

[limits]
memory_buffer_bytes = 1048576
max_clock_skew_s = 900
{limits}

[database]
url = "sqlite+aiosqlite:///{database or (tmp / 'state.db')}"

[inference]
{inference}

[screening]
{screening}

[quarantine]
path = "{tmp / 'quarantine'}"
{extra}
"""
    path = tmp / "bucketguard.toml"
    path.write_text(text)
    return path


def wait_healthy(endpoint: str, process: subprocess.Popen | None = None, timeout: float = 30.0,
                 log: Path | None = None, verify: ssl.SSLContext | bool = True) -> None:
    """Wait until the proxy's /healthz answers 200 (raises with the log if `process` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"proxy exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{endpoint}/healthz", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"proxy at {endpoint} did not become healthy")


def bound_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound on 127.0.0.1 (port 0: one the kernel picks) and not listening yet: connections to it are
    refused, and nobody else can take the port until it is closed or served on (no window as after free_port)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_in_thread(app: Any, *, port: int | None = None, tls: tuple[Path, Path] | None = None,
                    sock: socket.socket | None = None) -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app with uvicorn in a daemon thread until healthy: (endpoint, stop). It listens on `sock`
    (from bound_socket) when given, else on `port`, else on a port the kernel picks."""
    import uvicorn

    sock = sock or bound_socket(port or 0)
    port = int(sock.getsockname()[1])
    tls_options = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on", **tls_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    wait_healthy(endpoint, verify=ssl.create_default_context(cafile=str(tls[0])) if tls else True)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)

    return endpoint, stop
