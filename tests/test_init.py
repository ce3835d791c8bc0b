"""`bucketguard init`: from nothing to a proxy in front of a real S3 server, screening pict-rs uploads.

Issue 11's "done when": init is given only the upstream endpoint and keys (plus the pack folder), then
`config check` and `serve` work at once with the file as written, and pict-rs-style uploads through the proxy
are screened by the nsfw-age pack in-process. The upstream is moto with signature checking on, so the keys
init wrote are really used; the bucket is listed directly on moto afterwards.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from proxy.cli import main
from proxy.config import load_config
from proxy.demo.pictrs_client import PictrsClient, PictrsError
from proxy.screening.testimage import generate_png
from tests.support.moto import S3Server, free_port
from tests.support.proxy import start_subprocess


def bucketguard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def jpeg(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def reencoded_test_image() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(generate_png())).convert("RGB").resize((448, 336)).save(buffer, "WEBP", quality=70)
    return buffer.getvalue()


def store_block(stdout: str) -> dict:
    block = stdout[stdout.index("[store]"):].split("\n\n", 1)[0]
    return tomllib.loads(block)["store"]


@pytest.mark.slow
def test_init_then_serve_screens_pictrs_uploads(tmp_path: Path, moto_server_auth: S3Server,
                                                nsfw_age_pack_path: Path) -> None:
    moto_server_auth.create_bucket("first-hour-media")
    port = free_port()
    init = bucketguard("init", "--dir", str(tmp_path / "etc"), "--upstream-endpoint", moto_server_auth.endpoint,
                       "--bucket", "pictrs", "--real-bucket", "first-hour-media", "--listen", f"127.0.0.1:{port}",
                       "--pack", str(nsfw_age_pack_path),
                       env={"BUCKETGUARD_UPSTREAM_ACCESS_KEY": moto_server_auth.access_key,
                            "BUCKETGUARD_UPSTREAM_SECRET_KEY": moto_server_auth.secret_key})
    assert init.returncode == 0, init.stdout + init.stderr
    assert "checked: OK (upstream and buckets answer)" in init.stdout
    config_path = tmp_path / "etc" / "bucketguard.toml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert "set-by-" not in config_path.read_text()

    check = bucketguard("config", "check", str(config_path))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"{config_path}: OK") and "in-process" in check.stdout

    store = store_block(init.stdout)
    assert store["endpoint"] == f"http://127.0.0.1:{port}" and store["bucket_name"] == "pictrs"
    proxy = start_subprocess(config_path, moto_server_auth, "first-hour-media", port=port)
    try:
        assert "pack nsfw-age" in proxy.log() and "runs in-process on" in proxy.log()
        for generation in ("header", "presigned"):
            client = PictrsClient(store["endpoint"], store["bucket_name"], store["access_key"], store["secret_key"],
                                  region=store["region"], generation=generation, path_style=store["use_path_style"])
            try:
                client.health_check()
                photo = jpeg("astronaut" if generation == "header" else "coffee")
                assert client.store(f"{generation}/photo.jpg", photo, "image/jpeg") == photo
                with pytest.raises(PictrsError) as refused:
                    client.put(f"{generation}/test-image.webp", reencoded_test_image(), "image/webp")
                assert refused.value.status == 403 and refused.value.code == "AccessDenied"
            finally:
                client.close()
        keys = moto_server_auth.keys("first-hour-media")
        assert {"header/photo.jpg", "presigned/photo.jpg"} <= set(keys)
        assert not [k for k in keys if "test-image" in k], keys
        assert moto_server_auth.get("first-hour-media", "header/photo.jpg") == jpeg("astronaut")
        quarantined = list((tmp_path / "etc" / "data" / "quarantine").iterdir())
        assert len([p for p in quarantined if not p.name.startswith(".")]) == 2
    finally:
        proxy.stop()
    verify = bucketguard("evidence", "verify", "--config", str(config_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("layout", ["single", "gpu", "pull", "compose"])
def test_each_layout_writes_a_config_the_loader_accepts(layout: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import onnxruntime

    status = main(["init", "--dir", str(tmp_path), "--layout", layout, "--offline", "--json",
                   "--upstream-endpoint", "http://s3.internal:7480", "--upstream-access-key", "proxy",
                   "--upstream-secret-key", "upstream-secret"])
    out = capsys.readouterr()
    report = json.loads(out.out)
    no_cuda = layout == "gpu" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    expected_problems = [p for p in report["problems"] if "inference.provider: 'cuda'" in p] if no_cuda else []
    assert report["problems"] == expected_problems and len(expected_problems) == int(no_cuda)
    assert status == int(no_cuda), out.out + out.err
    config = load_config(report["config"], environ={})
    expected = {"single": ("in-process", "cpu"), "gpu": ("in-process", "cuda"), "pull": ("pull", "cpu"),
                "compose": ("remote", "cpu")}[layout]
    assert (config.inference.mode, config.inference.provider) == expected
    assert config.upstream.buckets == {"pictrs": "pictrs"}
    assert len(config.clients[0].secret_key) >= 40 and len(config.server.admin_token) >= 40
    assert (config.server.worker_tokens != {}) == (layout == "pull")
    assert tomllib.loads(report["pictrs_store"])["store"]["secret_key"] == config.clients[0].secret_key
    if layout == "compose":
        assert config.server.listen == "0.0.0.0:9000" and config.inference.endpoints == ("http://inference:9100",)
    else:
        assert Path(config.quarantine.path).is_dir() and Path(config.limits.spool_dir).is_dir()


def test_init_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["init", "--dir", str(tmp_path), "--offline", "--upstream-endpoint", "http://127.0.0.1:1"]
    assert main(args) == 0
    before = (tmp_path / "bucketguard.toml").read_text()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists: pass --force" in err
    assert (tmp_path / "bucketguard.toml").read_text() == before
    assert main([*args, "--force"]) == 0 and (tmp_path / "bucketguard.toml").read_text() != before


def test_init_refuses_a_bad_bucket_name_and_quotes_dotted_ones(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["init", "--offline", "--upstream-endpoint", "http://s3:7480"]
    assert main([*base, "--dir", str(tmp_path / "a"), "--bucket", "Not_A_Bucket"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bucket: 'Not_A_Bucket'" in err
    assert not (tmp_path / "a" / "bucketguard.toml").exists()
    assert main([*base, "--dir", str(tmp_path / "b"), "--bucket", "media.example.org",
                 "--real-bucket", "real.media"]) == 0
    config = load_config(tmp_path / "b" / "bucketguard.toml", environ={})
    assert config.bucket_map == {"media.example.org": "real.media"}
