"""Model packs and ONNX Runtime sessions: checksums, manifests, `bucketguard model info`, provider selection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inference.packs import PackError, load_pack, read_manifest
from inference.runtime import ProviderUnavailable, RuntimeOptions, create_session, model_variant
from proxy.cli import main


@pytest.fixture()
def pack_copy(test_pack_path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pack"
    shutil.copytree(test_pack_path, copy)
    return copy


def rewrite_manifest(pack: Path, **changes: object) -> None:
    manifest = read_manifest(pack)
    manifest.update(changes)
    (pack / "manifest.json").write_text(json.dumps(manifest))


def test_the_test_pack_loads_with_every_file_verified(test_pack_path: Path) -> None:
    pack = load_pack(test_pack_path)
    assert (pack.name, pack.kind) == ("test", "test")
    assert set(pack.files) == {"tower.onnx", "concepts.npy", "rules.json"}
    assert all(len(digest) == 64 for digest in pack.files.values())
    spec = pack.models["image"]
    assert (spec.input, spec.outputs, spec.size, spec.layout, spec.colour) == (
        "pixels", ("embeddings",), (32, 32), "NCHW", "RGB")
    assert "clip_csam" in pack.signals and pack.fp16_path("image") is None


@pytest.mark.parametrize("name", ["tower.onnx", "concepts.npy", "rules.json"])
def test_a_tampered_file_is_refused_by_name(pack_copy: Path, name: str) -> None:
    with (pack_copy / name).open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(PackError, match=rf"checksum mismatch for {name.replace('.', '[.]')}"):
        load_pack(pack_copy)


def test_a_missing_file_is_refused_by_name(pack_copy: Path) -> None:
    (pack_copy / "concepts.npy").unlink()
    with pytest.raises(PackError, match=r"missing file concepts\.npy"):
        load_pack(pack_copy)


@pytest.mark.parametrize(("change", "message"), [
    ({"tables": {}, "files": {"tower.onnx": "0" * 64, "../outside.onnx": "0" * 64}},
     r"files\.\.\./outside\.onnx points outside the pack"),
    ({"name": None, "files": None}, r"files must be an object"),
    ({"models": {"image": {"file": "other.onnx", "input": "x", "outputs": ["y"], "size": [8, 8]}}},
     r"models\.image\.file other\.onnx has no checksum in files"),
    ({"models": {"image": {"file": "tower.onnx", "outputs": ["y"], "size": [8, 8]}}},
     r"models\.image\.input is missing"),
    ({"models": {"image": {"file": "tower.onnx", "input": "x", "outputs": ["y"], "size": [8, 8],
                           "fp16_file": "tower.fp16.onnx"}}}, r"fp16_file tower\.fp16\.onnx has no checksum"),
    ({"models": {"image": {"file": "tower.onnx", "input": "x", "outputs": ["y"], "size": [8, 8],
                           "int8_file": "tower.int8.onnx"}}}, r"int8_file tower\.int8\.onnx has no checksum"),
])
def test_malformed_manifests_are_refused_clearly(pack_copy: Path, change: dict, message: str) -> None:
    rewrite_manifest(pack_copy, **change)
    with pytest.raises(PackError, match=message):
        load_pack(pack_copy)


def test_not_a_pack(tmp_path: Path) -> None:
    with pytest.raises(PackError, match=r"no manifest\.json"):
        load_pack(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PackError, match="not valid JSON"):
        load_pack(tmp_path)


def test_model_info_prints_the_manifest_and_the_verification(test_pack_path: Path, capsys) -> None:
    assert main(["model", "info", str(test_pack_path)]) == 0
    out = capsys.readouterr().out
    for text in ("test", "tower.onnx", "pixels", "embeddings", "32x32", "NCHW", "clip_underage",
                 "all 3 files verified"):
        assert text in out, text


def test_model_info_on_a_broken_pack_is_one_line_naming_the_file(pack_copy: Path, capsys) -> None:
    (pack_copy / "rules.json").write_text("{}")
    assert main(["model", "info", str(pack_copy)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "checksum mismatch for rules.json" in lines[0]


# ---- runtime ------------------------------------------------------------------------------------------------

def test_auto_reports_the_provider_that_really_runs(test_pack_path: Path) -> None:
    session, provider = create_session(load_pack(test_pack_path).model_path("image"), RuntimeOptions("auto"))
    assert provider == session.get_providers()[0]
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else (
        "CPUExecutionProvider")
    assert provider == expected


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime build has CUDA; the refusal is for machines without it")
def test_cuda_required_without_it_is_refused_clearly(test_pack_path: Path) -> None:
    with pytest.raises(ProviderUnavailable, match=r"provider 'cuda' was required .* choose provider = 'cpu'"):
        create_session(load_pack(test_pack_path).model_path("image"), RuntimeOptions("cuda"))


def test_thread_counts_reach_the_session(test_pack_path: Path) -> None:
    session, provider = create_session(load_pack(test_pack_path).model_path("image"),
                                       RuntimeOptions("cpu", intra_op_threads=1, inter_op_threads=1))
    assert provider == "CPUExecutionProvider"
    assert session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="thread counts"):
        RuntimeOptions("cpu", intra_op_threads=-1)
    with pytest.raises(ValueError, match="provider"):
        RuntimeOptions("gpu")  # type: ignore[arg-type]


def test_fp16_variant_is_chosen_only_for_cuda_and_only_when_listed(tmp_path: Path) -> None:
    fp32, fp16 = tmp_path / "tower.onnx", tmp_path / "tower.fp16.onnx"
    assert model_variant(fp32, RuntimeOptions("cuda", fp16=True), True, fp16) == fp16
    assert model_variant(fp32, RuntimeOptions("cuda", fp16=True), True, None) == fp32  # not guessed from disk
    assert model_variant(fp32, RuntimeOptions("cpu", fp16=True), False, fp16) == fp32
    assert model_variant(fp32, RuntimeOptions("cuda", fp16=False), True, fp16) == fp32


def test_fp16_on_a_cpu_machine_runs_the_fp32_model(fp16_test_pack_path: Path) -> None:
    pack = load_pack(fp16_test_pack_path)
    pixels = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    plain, _ = create_session(pack.model_path("image"), RuntimeOptions("cpu"))
    asked, provider = create_session(pack.model_path("image"), RuntimeOptions("auto", fp16=True),
                                     fp16_path=pack.fp16_path("image"))
    got, expected = asked.run(None, {"pixels": pixels})[0], plain.run(None, {"pixels": pixels})[0]
    if provider == "CPUExecutionProvider":  # fp16 is for CUDA only: the CPU runs the fp32 model, bit for bit
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-2)
