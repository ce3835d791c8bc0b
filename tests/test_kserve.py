"""KServe v2: the pack's graphs served by a real MLServer, pre- and post-processing in bucketguard, the signals
equal to the in-process engine's; the Triton repository the CLI writes.

MLServer pins an older starlette than bucketguard, so it lives in its own virtual environment
(`.venv-mlserver`, made by `scripts/bootstrap dev`, or here on first use) and runs as a separate process with the
small onnxruntime runtime bucketguard ships (inference/data/mlserver_onnx.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from inference.engine import Engine
from inference.export.triton import write_mlserver_repo
from inference.kserve import KServeError, KServeSession, KServeUnavailable
from inference.packs import load_pack, sha256_file
from inference.runtime import RuntimeOptions
from proxy.cli import main
from tests.support.moto import free_port

ROOT = Path(__file__).resolve().parents[1]
MLSERVER_VENV = Path(os.environ.get("BUCKETGUARD_MLSERVER_VENV", ROOT / ".venv-mlserver"))
MLSERVER_REQUIREMENTS = ("mlserver==1.7.1", "onnxruntime==1.31.1")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "horse", "coins")


def mlserver_binary() -> Path:
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True, timeout=120)
        subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *MLSERVER_REQUIREMENTS],
                       check=True, timeout=900)
    return binary


@pytest.fixture(scope="module")
def kserve(nsfw_age_pack_path: Path, test_pack_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real MLServer on loopback serving the nsfw-age and test packs' graphs."""
    repo = tmp_path_factory.mktemp("mlserver")
    for pack in (nsfw_age_pack_path, test_pack_path):
        write_mlserver_repo(load_pack(pack), repo)
    port = free_port()
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0, "metrics_endpoint": None}))
    log = (repo / "mlserver.log").open("wb")
    process = subprocess.Popen([str(mlserver_binary()), "start", str(repo)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=repo)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (repo / "mlserver.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def jpeg(name: str) -> bytes:
    array = getattr(skimage.data, name)()
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def screen_all(packs: list[Path], options: RuntimeOptions, images: list[bytes]):
    async def run():
        engine = Engine.from_packs(packs, options)
        try:
            return engine.packs, [await engine.screen(data, "image/jpeg") for data in images]
        finally:
            await engine.close()

    return asyncio.run(run())


def test_signals_over_kserve_v2_equal_the_in_process_engine(kserve: str, nsfw_age_pack_path: Path,
                                                            test_pack_path: Path, capsys) -> None:
    images = [jpeg(name) for name in PHOTOS]
    packs = [nsfw_age_pack_path, test_pack_path]
    _, local = screen_all(packs, RuntimeOptions("cpu"), images)
    remote_packs, remote = screen_all(packs, RuntimeOptions("cpu", kserve=(kserve,)), images)
    assert {p["provider"] for p in remote_packs} == {"KServeV2"}
    largest = 0.0
    for name, here, there in zip(PHOTOS, local, remote, strict=True):
        assert set(here.signals) == set(there.signals), name
        largest = max(largest, *(abs(here.signals[k] - there.signals[k]) for k in here.signals))
    with capsys.disabled():
        print(f"\nKServe v2 (MLServer) vs in-process, {len(PHOTOS)} photographs x 2 packs: largest signal "
              f"difference {largest}")
    assert largest == 0.0
    assert any(r.signals["faces"] >= 1 for r in remote)  # the second (face crop) model call really ran remotely


def test_kserve_sessions_fail_over_and_report_outages_and_bad_answers(kserve: str, test_pack_path: Path,
                                                                     dead_endpoint: str) -> None:
    pack = load_pack(test_pack_path)
    pixels = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    dead = dead_endpoint
    session = KServeSession([dead, kserve], pack.model_name("image"), retries=1)
    out = [session.run(["embeddings"], {"pixels": pixels})[0] for _ in range(3)]
    assert all(o.shape == (3, 32) and o.dtype == np.float32 for o in out)
    assert session.pool.states[1].served == 3 and session.pool.states[0].failures >= 1
    with pytest.raises(KServeUnavailable):  # a ConnectionError: an outage, on_unavailable decides
        KServeSession([dead], pack.model_name("image"), retries=0).run(["embeddings"], {"pixels": pixels})
    with pytest.raises(KServeError, match="HTTP 404"):
        KServeSession([kserve], "no-such-model", retries=0).run(["embeddings"], {"pixels": pixels})


def test_triton_repo_writes_one_config_per_model(nsfw_age_pack_path: Path, fp16_test_pack_path: Path,
                                                 tmp_path: Path, capsys) -> None:
    out = tmp_path / "repo"
    assert main(["model", "triton-repo", str(nsfw_age_pack_path), str(out)]) == 0
    pack = load_pack(nsfw_age_pack_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(pack.model_name(role) for role in pack.models)
    for role in pack.models:
        folder = out / pack.model_name(role)
        config = (folder / "config.pbtxt").read_text()
        assert f'name: "{pack.model_name(role)}"' in config and 'backend: "onnxruntime"' in config
        assert "max_batch_size: 16" in config and "dynamic_batching" in config and "KIND_GPU" in config
        assert f'name: "{pack.models[role].input}"' in config
        assert 'value: "FP16"' in config  # no fp16 variant in this pack: TensorRT FP16 on the GPU
        assert sha256_file(folder / "1" / "model.onnx") == pack.files[pack.models[role].file]
    assert "dims: [ 224, 224, 3 ]" in (out / pack.model_name("nsfw") / "config.pbtxt").read_text()
    assert "dims: [ 3, -1, -1 ]" in (out / pack.model_name("parts") / "config.pbtxt").read_text()
    fp16 = load_pack(fp16_test_pack_path)
    assert main(["model", "triton-repo", str(fp16_test_pack_path), str(out)]) == 0
    folder = out / fp16.model_name("image")
    assert sha256_file(folder / "1" / "model.onnx") == fp16.files["tower.fp16.onnx"]  # the checksummed variant
    config = (folder / "config.pbtxt").read_text()
    assert "TYPE_FP32" in config and "tensorrt" not in config
    assert main(["model", "triton-repo", "--cpu", str(fp16_test_pack_path), str(out)]) == 0
    config = (folder / "config.pbtxt").read_text()
    assert "KIND_CPU" in config and sha256_file(folder / "1" / "model.onnx") == fp16.files["tower.onnx"]
    capsys.readouterr()
    assert main(["model", "triton-repo", str(tmp_path / "nothing"), str(out)]) == 1
    assert "not a model pack" in capsys.readouterr().err


def test_the_proxy_screens_through_kserve_when_configured(kserve: str, test_pack_path: Path, proxy_factory,
                                                          tmp_path: Path) -> None:
    """[inference] kserve = [...]: an upload through the real proxy is decided on signals computed by MLServer."""
    from proxy.demo.pictrs_client import PictrsClient, PictrsError
    from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY

    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "any-clip"\nwhen = { clip_underage_margin = ">= -10" }\n'
                      'action = "quarantine"\ncategory = "kserve-test"\n')
    proxy = proxy_factory(pipeline=True, screening=f'policy = "{policy}"', inference=(
        f'mode = "in-process"\npacks = ["{test_pack_path}"]\nprovider = "cpu"\nkserve = ["{kserve}"]'))
    client = PictrsClient(proxy.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY])
    before = httpx.get(f"{kserve}/v2/models/{load_pack(test_pack_path).model_name('image')}/ready").status_code
    with pytest.raises(PictrsError) as info:
        client.put("k/coffee.jpg", jpeg("coffee"), "image/jpeg")
    assert before == 200 and info.value.status == 403
    assert proxy.upstream_keys() == []
    listed = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "list", "--json", "--config",
                             str(proxy.config_path)], capture_output=True, text=True, timeout=120)
    caught = json.loads(listed.stdout)
    assert [item["category"] for item in caught] == ["kserve-test"]


def test_a_kserve_outage_is_unavailable_not_a_verdict(test_pack_path: Path, proxy_factory, tmp_path: Path,
                                                     dead_endpoint: str) -> None:
    """With the KServe v2 servers down (and the pack's ONNX files right here), the proxy does not fall back to
    running the graphs itself: the policy's on_unavailable decides (refuse: 503 SlowDown, nothing lands)."""
    from proxy.demo.pictrs_client import PictrsClient, PictrsError
    from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY

    policy = tmp_path / "policy.toml"
    policy.write_text('on_unavailable = "refuse"\n[[rule]]\nname = "n"\nwhen = { nsfw = ">= 0.9" }\n'
                      'action = "flag"\n')
    dead = dead_endpoint
    proxy = proxy_factory(pipeline=True, screening=f'policy = "{policy}"', inference=(
        f'mode = "in-process"\npacks = ["{test_pack_path}"]\nprovider = "cpu"\nkserve = ["{dead}"]'))
    client = PictrsClient(proxy.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY])
    with pytest.raises(PictrsError) as info:
        client.put("k/chelsea.jpg", jpeg("chelsea"), "image/jpeg")
    assert info.value.status == 503 and info.value.code == "SlowDown"
    assert proxy.upstream_keys() == []
