"""Running the proxy for tests: in-process (uvicorn in a thread, any screen) or as a real `bucketguard serve`."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import uvicorn
from botocore.config import Config as BotoConfig

from proxy.app import build_app
from proxy.config import Config, load_config
from proxy.front.gateway import create_app
from proxy.screening.upload import Screen
from tests.support.moto import S3Server, free_port

CLIENT_BUCKET = "pictrs"
#: Client key pairs; all map to the one upstream identity.
CLIENTS = {"pictrs-key": "pictrs-secret-0123456789", "rclone-key": "rclone-secret-abcdef", "admin-key": "admin-sec"}
PICTRS_KEY = "pictrs-key"


def write_config(tmp: Path, upstream: S3Server, real_bucket: str, *, port: int = 0, extra: str = "",
                 limits: str = "", database: Path | None = None, inference: str = 'mode = "none"',
                 screening: str = "", server: str = "") -> Path:
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


@dataclass
class RunningProxy:
    endpoint: str
    upstream: S3Server
    real_bucket: str
    config_path: Path
    process: subprocess.Popen | None = None
    stopper: Callable[[], None] | None = None
    app: Any = None
    log_path: Path | None = None
    _clients: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def client(self, access_key: str = PICTRS_KEY, secret: str | None = None, **config: Any):
        """A boto3 client that talks to the proxy (path style)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=access_key,
            aws_secret_access_key=secret if secret is not None else CLIENTS[access_key],
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config))

    def upstream_keys(self, prefix: str = "") -> list[str]:
        return self.upstream.keys(self.real_bucket, prefix)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.stopper:
            self.stopper()
            self.stopper = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ssl_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def wait_healthy(endpoint: str, process: subprocess.Popen | None = None, timeout: float = 30.0,
                 log: Path | None = None, verify: ssl.SSLContext | bool = True) -> None:
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


def start_in_process(config: Config, upstream: S3Server, real_bucket: str, config_path: Path,
                     screen: Screen | None = None, app: Any = None,
                     tls: tuple[Path, Path] | None = None) -> RunningProxy:
    """uvicorn in a background thread, so a test can plug in its own screen or app (optionally over TLS)."""
    port = free_port()
    app = app if app is not None else create_app(config, screen=screen)
    ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on", **ssl))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    wait_healthy(endpoint, verify=ssl_context(tls[0]) if tls else True)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)

    return RunningProxy(endpoint, upstream, real_bucket, config_path, stopper=stop, app=app)


def start_subprocess(config_path: Path, upstream: S3Server, real_bucket: str, *, port: int | None = None,
                     env: dict[str, str] | None = None) -> RunningProxy:
    """A real `bucketguard serve` process."""
    port = port or free_port()
    log_path = config_path.parent / f"proxy-{port}.log"
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path), "--listen", f"127.0.0.1:{port}"],
        stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    endpoint = f"http://127.0.0.1:{port}"
    wait_healthy(endpoint, process, log=log_path)
    return RunningProxy(endpoint, upstream, real_bucket, config_path, process=process, log_path=log_path)


_bucket_counter = iter(range(1, 1_000_000))


def new_bucket(upstream: S3Server) -> str:
    name = f"real-media-{os.getpid()}-{next(_bucket_counter)}"
    upstream.create_bucket(name)
    return name


@pytest.fixture
def proxy_factory(moto_server: S3Server,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningProxy]]:
    """Start proxies: `proxy_factory(screen=..., limits="...", subprocess=False, upstream=None)`."""
    started: list[RunningProxy] = []

    def start(*, screen: Screen | None = None, limits: str = "", extra: str = "", subprocess: bool = False,
              upstream: S3Server | None = None, real_bucket: str | None = None,
              config_path: Path | None = None, tls: tuple[Path, Path] | None = None,
              pipeline: bool = False, **config_sections: str) -> RunningProxy:
        upstream = upstream or moto_server
        real_bucket = real_bucket or new_bucket(upstream)
        if config_path is None:
            tmp = tmp_path_factory.mktemp("proxy")
            config_path = write_config(tmp, upstream, real_bucket, extra=extra, limits=limits, **config_sections)
        if subprocess:
            running = start_subprocess(config_path, upstream, real_bucket)
        else:
            config = load_config(config_path)
            app = build_app(config) if pipeline else None
            running = start_in_process(config, upstream, real_bucket, config_path, screen=screen, tls=tls, app=app)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def proxy(proxy_factory: Callable[..., RunningProxy]) -> RunningProxy:
    """An in-process proxy with the allow-all screen in front of a fresh bucket on moto."""
    return proxy_factory()
