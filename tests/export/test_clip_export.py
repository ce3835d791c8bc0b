"""The export lane: the CLIP image tower exported with torch and open_clip, compared with the torch model.

These need the `export` extra (torch, torchvision, open_clip), which is never in the proxy's install: they run in
their own venv, `.venv-export` (made by `scripts/bootstrap dev`), started by tests/test_export_lane.py. Run by
hand: `.venv-export/bin/python -m pytest --noconftest -q tests/export`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import open_clip
import torch

from inference.detectors.concepts import load_evaluator
from inference.export.clip import build
from inference.packs import load_pack


def test_clip_export_with_quick_gelu_matches_the_torch_model_with_the_same_activation(tmp_path: Path) -> None:
    pack = load_pack(build(tmp_path / "clip", "ViT-B-32-quickgelu", "none", seed=3))
    assert pack.source["activation"] == "quick_gelu" and not pack.calibrated_for("nsfw_checker")
    torch.manual_seed(3)
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval()
    gelu = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    gelu.load_state_dict(model.state_dict())
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, other = model.encode_image(pixels).numpy(), gelu.encode_image(pixels).numpy()
    actual = ort.InferenceSession(str(pack.model_path("image")), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": pixels.numpy()})[0]
    assert np.abs(actual - expected).max() < 1e-4
    assert np.abs(actual - other).max() > 1e-3  # the activation really differs: GELU would not match


def test_clip_export_of_a_random_open_clip_model_matches_torch(tmp_path: Path) -> None:
    pack = load_pack(build(tmp_path / "clip", "ViT-B-32", "none", seed=3))
    assert pack.kind == "clip-concepts" and pack.models["image"].size == (224, 224)
    torch.manual_seed(3)  # the builder's random init, recreated
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    pixels = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = model.encode_image(pixels).numpy()
    session = ort.InferenceSession(str(pack.model_path("image")), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"pixels": pixels.numpy()})[0]
    assert actual.shape == expected.shape and np.abs(actual - expected).max() < 1e-4
    table = np.load(pack.table_path("concepts"))
    assert table.shape == (len(load_evaluator(pack.table_path("rules")).words), expected.shape[1])
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)
