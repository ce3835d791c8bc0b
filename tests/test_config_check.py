"""`config check` and `serve` refuse every misconfiguration with one line naming the key, exit 1, no traceback.

The upstream checks run against moto with signature checking on (`moto_server_auth`), so a wrong secret is
really refused by the server, and a missing bucket is really missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from tests.support.moto import S3Server

PACK_MISSING = "/nonexistent/packs/nsfw-age"


def write(tmp: Path, upstream: S3Server, bucket: str, *, secret: str | None = None, client_secret: str = "s3cret-1",
          server: str = "", screening: str = "", database: str = "", inference: str = 'mode = "none"',
          quarantine: str = "", buckets: str | None = None, limits: str = "") -> Path:
    path = tmp / "bucketguard.toml"
    mapping = f'pictrs = "{bucket}"' if buckets is None else buckets
    path.write_text(f"""
[server]
listen = "127.0.0.1:0"
{server}
[[clients]]
access_key = "pictrs"
secret_key = "{client_secret}"
[upstream]
endpoint = "{upstream.endpoint}"
access_key = "{upstream.access_key}"
secret_key = "{secret if secret is not None else upstream.secret_key}"
[upstream.buckets]
{mapping}
[limits]
{limits}
[database]
url = "{database or f'sqlite+aiosqlite:///{tmp / "state.db"}'}"
[inference]
{inference}
[screening]
{screening}
[quarantine]
{quarantine or f'path = "{tmp / "quarantine"}"'}
""")
    return path


@pytest.fixture(scope="module")
def bucket(moto_server_auth: S3Server) -> str:
    moto_server_auth.create_bucket("checked-media")
    moto_server_auth.create_bucket("checked-quarantine")
    return "checked-media"


def check(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[str]]:
    status = main(["config", "check", str(path), *extra])
    captured = capsys.readouterr()
    return status, [line for line in captured.err.splitlines() if line]


def test_a_good_config_passes_every_check(tmp_path: Path, moto_server_auth: S3Server, bucket: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, moto_server_auth, bucket)
    status = main(["config", "check", str(path)])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.startswith(f"{path}: OK") and "pictrs -> checked-media" in out.out
    assert (tmp_path / "state.db").exists(), "the database was opened and migrated"


CASES = {
    "placeholder client secret": (dict(client_secret="set-by-BUCKETGUARD_CLIENT_PICTRS_SECRET"),
                                  "clients[0].secret_key: still the example's placeholder"),
    "placeholder admin token": (dict(server='admin_token = "set-by-BUCKETGUARD_ADMIN_TOKEN"'),
                                "server.admin_token: still the example's placeholder"),
    "env.example value left in place": (dict(server='validate_token = "change-me-validate-token"'),
                                        "server.validate_token: still the example's placeholder"),
    "unreadable policy": (dict(screening='policy = "/etc/bucketguard-missing/policy.toml"'),
                          "screening.policy: /etc/bucketguard-missing/policy.toml: cannot read the policy"),
    "database folder missing": (dict(database="sqlite+aiosqlite:////nonexistent-bg/state.db"),
                                "database.url: the folder /nonexistent-bg does not exist"),
    "pack not loadable": (dict(inference=f'mode = "in-process"\npacks = ["{PACK_MISSING}"]'), "inference.packs[0]: "),
    "quarantine bucket passed through": (
        dict(buckets="", quarantine='store = "s3"\nbucket = "checked-quarantine"\naccess_key = "q"\nsecret_key = "q"'),
        "upstream.buckets: empty, so every bucket name is passed through"),
    "quarantine bucket mapped": (
        dict(buckets='pictrs = "checked-media"\nevidence = "checked-quarantine"',
             quarantine='store = "s3"\nbucket = "checked-quarantine"\naccess_key = "q"\nsecret_key = "q"'),
        "upstream.buckets.evidence: serves 'checked-quarantine', the quarantine bucket"),
    "pull mode without worker tokens": (dict(inference='mode = "pull"'), "server.worker_tokens: mode is 'pull'"),
    "spool folder is a file": (dict(limits='spool_dir = "/etc/hostname"'), "limits.spool_dir: /etc/hostname:"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_misconfiguration_is_one_line_naming_the_key(case: str, tmp_path: Path, moto_server_auth: S3Server,
                                                         bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    changes, expected = CASES[case]
    changes = dict(changes)
    if changes.get("quarantine"):
        changes["quarantine"] = changes["quarantine"].replace('"q"', f'"{moto_server_auth.access_key}"', 1)
    path = write(tmp_path, moto_server_auth, bucket, **changes)
    status, lines = check(path, capsys, "--offline")
    assert status == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bucketguard: {path}: ") and expected in lines[0]
    assert "Traceback" not in lines[0]


def test_upstream_refusing_the_proxys_credentials(tmp_path: Path, moto_server_auth: S3Server, bucket: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, moto_server_auth, bucket, secret="not-the-secret")
    status, lines = check(path, capsys)
    assert status == 1 and len(lines) == 1, lines
    assert "upstream.access_key: " in lines[0] and "refused the proxy's own credentials" in lines[0]


def test_upstream_bucket_missing(tmp_path: Path, moto_server_auth: S3Server, bucket: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, moto_server_auth, bucket, buckets='pictrs = "never-created-bucket"')
    status, lines = check(path, capsys)
    assert status == 1 and len(lines) == 1, lines
    assert "upstream.buckets.pictrs: the bucket 'never-created-bucket' does not exist" in lines[0]


def test_upstream_not_answering(tmp_path: Path, moto_server_auth: S3Server, bucket: str, dead_endpoint: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    dead = S3Server(dead_endpoint, "k", "s")
    path = write(tmp_path, dead, bucket)
    status, lines = check(path, capsys)
    assert status == 1 and len(lines) == 1, lines
    assert "upstream.endpoint: " in lines[0] and "did not answer" in lines[0]


def test_quarantine_bucket_not_writable(tmp_path: Path, moto_server_auth: S3Server, bucket: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    quarantine = (f'store = "s3"\nbucket = "no-such-quarantine"\nendpoint = "{moto_server_auth.endpoint}"\n'
                  f'access_key = "{moto_server_auth.access_key}"\nsecret_key = "{moto_server_auth.secret_key}"')
    path = write(tmp_path, moto_server_auth, bucket, quarantine=quarantine)
    status, lines = check(path, capsys)
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"bucketguard: {path}: quarantine.bucket: cannot write to s3://no-such-quarantine")


def test_unparsable_config_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[clients]]\naccess_key = "a"\nsecret_key = "b"\n[limits]\ntimeout = 3\n')
    status, lines = check(path, capsys)
    assert status == 1 and len(lines) == 1 and "limits.timeout: unknown setting" in lines[0]


@pytest.mark.parametrize("case", ["unreadable policy", "database folder missing", "placeholder client secret",
                                  "quarantine bucket passed through"])
def test_serve_refuses_without_a_traceback(case: str, tmp_path: Path, moto_server_auth: S3Server,
                                           bucket: str) -> None:
    changes, expected = CASES[case]
    path = write(tmp_path, moto_server_auth, bucket, **changes)
    run = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    lines = run.stderr.splitlines()
    assert lines[0].startswith(f"bucketguard: {path}: ") and expected in lines[0]
    assert lines[-1].startswith("bucketguard: not starting")


def test_cuda_provider_needs_a_cuda_onnxruntime(tmp_path: Path, moto_server_auth: S3Server, bucket: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--layout gpu` asks for CUDA: refused by name where this onnxruntime has none, accepted where it has."""
    import onnxruntime

    path = write(tmp_path, moto_server_auth, bucket, inference='mode = "in-process"\nprovider = "cuda"')
    status, lines = check(path, capsys, "--offline")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert status == 0 and lines == []
    else:
        assert status == 1 and len(lines) == 1
        assert "inference.provider: 'cuda', but this onnxruntime offers only" in lines[0]
