"""Fixtures of the differential conformance lane: one upstream of each kind for the session (moto with
signature checking, Ceph RGW), and one proxy per upstream kind and bucket mode, started on first use.

Set BUCKETGUARD_CONFORMANCE_REPORT=FILE to have every case whose answers differ written to FILE (markdown,
one item per differing request) at the end of the session.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.app import build_app
from proxy.config import load_config
from tests.conformance.harness import Side
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, CLIENTS, RunningProxy, start_in_process, write_config

CLIENT_KEY = "rclone-key"
UPSTREAM_FIXTURES = {"moto": "moto_server_auth", "rgw": "rgw_server"}


def quarantine_bucket(kind: str) -> str:
    return f"cf-evidence-{kind}"


def passthrough_config(tmp: Path, upstream: S3Server, extra: str = "") -> Path:
    """The test config with `[upstream] buckets = "*"` in place of the bucket map."""
    path = write_config(tmp, upstream, "unused", extra=extra)
    text, count = re.subn(r'\[upstream\.buckets\]\n\S+ = "unused"\n', 'buckets = "*"\n', path.read_text())
    assert count == 1, "the shared test config no longer has the bucket map this fixture replaces"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def conformance_proxies(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, str], RunningProxy]]:
    """`proxy_for(kind, mode)`: the session's proxy in front of that upstream, in "passthrough", "mapped",
    "guarded" (pass-through with the quarantine kept in a bucket of the same upstream) or "screened" mode
    (pass-through with the real screening pipeline instead of the allow-all screen)."""
    started: dict[tuple[str, str], RunningProxy] = {}

    def proxy_for(kind: str, mode: str) -> RunningProxy:
        if (kind, mode) not in started:
            upstream: S3Server = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
            tmp = tmp_path_factory.mktemp(f"conformance-{kind}-{mode}")
            app = None
            if mode == "passthrough":
                real_bucket, path = "", passthrough_config(tmp, upstream)
            elif mode == "screened":  # pass-through with the real screening pipeline (policy: let non-media land)
                policy = tmp / "policy.toml"
                policy.write_text('on_non_media = "allow"\non_undecodable = "allow"\non_unavailable = "allow"\n')
                real_bucket, path = "", passthrough_config(tmp, upstream)
                path.write_text(path.read_text().replace("[screening]\n", f'[screening]\npolicy = "{policy}"\n', 1))
                app = build_app(load_config(path))
            elif mode == "guarded":  # pass-through, with the quarantine in a bucket of the same upstream
                upstream.client().create_bucket(Bucket=quarantine_bucket(kind))
                real_bucket, path = "", passthrough_config(tmp, upstream, extra=(
                    f'store = "s3"\nbucket = "{quarantine_bucket(kind)}"\nendpoint = "{upstream.endpoint}"\n'
                    f'access_key = "{upstream.access_key}"\nsecret_key = "{upstream.secret_key}"\n'))
            else:
                real_bucket = f"cf-mapped-{kind}"
                upstream.client().create_bucket(Bucket=real_bucket)
                path = write_config(tmp, upstream, real_bucket)
            started[(kind, mode)] = start_in_process(load_config(path), upstream, real_bucket, path, app=app)
        return started[(kind, mode)]

    yield proxy_for
    for running in started.values():
        running.stop()


@pytest.fixture(scope="session")
def conformance_report() -> Iterator[list[str]]:
    """Collects a markdown item per differing request; written out when the env var names a file, with
    the counts of compared cases and requests."""
    items: list[str] = []
    yield items
    from tests.conformance.harness import STATS

    target = os.environ.get("BUCKETGUARD_CONFORMANCE_REPORT")
    if target:
        header = ("# Conformance failures (written by tests/conformance; regenerated on each full run)\n\n"
                  "Each item: a request the upstream alone answers correctly and the proxy answers differently.\n"
                  "Re-run: `BUCKETGUARD_CONFORMANCE_REPORT=/work/notes/conformance_failures.md "
                  ".venv/bin/python -m pytest -q -p no:cacheprovider tests/conformance`\n\n")
        counts = (f"Compared: {STATS['cases']} case runs ({STATS['operations']} operations), {STATS['requests']} "
                  "outcomes per side (responses and values derived from them), "
                  f"{STATS['differing']} differing.\n\n")
        Path(target).write_text(header + counts + ("\n".join(items) if items else "None: every case matches.\n"))


_counter = iter(range(1, 1_000_000))


def make_sides(kind: str, mode: str, upstream: S3Server, proxy: RunningProxy,
               logical: tuple[str, ...]) -> tuple[Side, Side]:
    """A fresh pair of sides: each with its own buckets (created on the upstream), or in mapped mode its
    own key prefix in `pictrs` (proxy) and in a fresh bucket (upstream)."""
    number = next(_counter)
    admin = upstream.client()

    def names(role: str) -> dict[str, str]:
        return {name: f"cf-{number}-{role[0]}-{name}" for name in logical}

    up_buckets, proxy_buckets = names("upstream"), names("proxy")
    for name in logical:
        if not name.startswith("new"):  # "new..." buckets are the case's to create
            admin.create_bucket(Bucket=up_buckets[name])
            if mode != "mapped":
                admin.create_bucket(Bucket=proxy_buckets[name])
    key_prefix = ""
    if mode == "mapped":
        proxy_buckets = {name: CLIENT_BUCKET for name in logical}
        key_prefix = f"cf-{number}/"
    up = Side("upstream", kind, upstream.endpoint, upstream.access_key, upstream.secret_key, up_buckets, key_prefix,
              admin=admin)
    through = Side("proxy", kind, proxy.endpoint, CLIENT_KEY, CLIENTS[CLIENT_KEY], proxy_buckets, key_prefix,
                   admin=admin)
    # In mapped mode the real bucket's name is deliberately not masked: if the proxy let it leak (a Name, a
    # Location, an error's Resource), the comparison shows it.
    return up, through
