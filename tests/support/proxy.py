"""Running the proxy for tests: in-process (uvicorn in a thread, any screen) or as a real `bucketguard serve`."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from proxy.app import build_app
from proxy.config import Config, load_config
from proxy.demo.servers import (
    CLIENT_BUCKET,
    CLIENTS,
    PICTRS_KEY,
    S3Server,
    bound_socket,
    free_port,
    serve_in_thread,
    wait_healthy,
)
from proxy.demo.servers import write_proxy_config as write_config
from proxy.front.gateway import create_app
from proxy.screening.upload import Screen

__all__ = ["CLIENTS", "CLIENT_BUCKET", "PICTRS_KEY", "RunningProxy", "new_bucket", "ssl_context", "start_in_process",
           "start_subprocess", "use_database", "wait_healthy", "write_config"]


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


def start_in_process(config: Config, upstream: S3Server, real_bucket: str, config_path: Path,
                     screen: Screen | None = None, app: Any = None,
                     tls: tuple[Path, Path] | None = None) -> RunningProxy:
    """uvicorn in a background thread, so a test can plug in its own screen or app (optionally over TLS)."""
    app = app if app is not None else create_app(config, screen=screen)
    endpoint, stop = serve_in_thread(app, tls=tls)
    return RunningProxy(endpoint, upstream, real_bucket, config_path, stopper=stop, app=app)


def start_subprocess(config_path: Path, upstream: S3Server, real_bucket: str, *, port: int | None = None,
                     env: dict[str, str] | None = None) -> RunningProxy:
    """A real `bucketguard serve` process, waited for until healthy (generously: a loaded CI machine is slow).

    Without a `port` it takes a free one, and another if something else bound that port first (free_port only
    says it was free a moment ago)."""
    for attempt in range(3):
        chosen = port or free_port()
        log_path = config_path.parent / f"proxy-{chosen}.log"
        with log_path.open("wb") as handle:  # the child keeps its own copy
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path), "--listen",
                 f"127.0.0.1:{chosen}"], stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        endpoint = f"http://127.0.0.1:{chosen}"
        try:
            wait_healthy(endpoint, process, timeout=120, log=log_path)
        except RuntimeError:
            if process.poll() is None:
                process.kill()
            process.wait()
            if port is None and attempt < 2 and "address already in use" in log_path.read_text().lower():
                continue
            raise
        return RunningProxy(endpoint, upstream, real_bucket, config_path, process=process, log_path=log_path)
    raise AssertionError("unreachable")


def use_database(config_path: Path, url: str) -> None:
    """Point a config written by write_config at another state database (a PostgreSQL URL, say): the proxy, and
    every CLI command given this config, then use it."""
    text = config_path.read_text()
    start = text.index('url = "sqlite+aiosqlite:///')
    config_path.write_text(text[:start] + f'url = "{url}"' + text[text.index("\n", start):])


_bucket_counter = iter(range(1, 1_000_000))


def new_bucket(upstream: S3Server) -> str:
    name = f"real-media-{os.getpid()}-{next(_bucket_counter)}"
    upstream.create_bucket(name)
    return name


@pytest.fixture
def proxy_factory(moto_server: S3Server,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningProxy]]:
    """Start proxies: `proxy_factory(screen=..., limits="...", subprocess=False, upstream=None, database_url=None)`."""
    started: list[RunningProxy] = []

    def start(*, screen: Screen | None = None, limits: str = "", extra: str = "", subprocess: bool = False,
              upstream: S3Server | None = None, real_bucket: str | None = None,
              config_path: Path | None = None, tls: tuple[Path, Path] | None = None,
              pipeline: bool = False, database_url: str | None = None, **config_sections: str) -> RunningProxy:
        upstream = upstream or moto_server
        real_bucket = real_bucket or new_bucket(upstream)
        if config_path is None:
            tmp = tmp_path_factory.mktemp("proxy")
            config_path = write_config(tmp, upstream, real_bucket, extra=extra, limits=limits, **config_sections)
            if database_url is not None:
                use_database(config_path, database_url)
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


@pytest.fixture
def dead_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT where nothing answers: the port is held (bound, never listening) for the whole test, so
    connections are refused and no server started meanwhile can take it (a port free_port saw free could be)."""
    sock = bound_socket()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
