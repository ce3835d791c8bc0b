"""`bucketguard model build clip`: an open_clip image tower exported to ONNX, plus its concept table.

Needs the `export` extra (torch, open-clip-torch, onnxscript); run it on any machine that can fetch the
weights (no model hub is needed for `--pretrained none`, which gives random weights for testing).
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from inference.detectors.concepts import SIGNALS, ConceptRules
from inference.export.fp16 import write_fp16_variant
from inference.packs import write_manifest


class ExportUnavailable(RuntimeError):
    pass


def _imports():
    try:
        import open_clip  # type: ignore[import-not-found]
        import torch  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ExportUnavailable("exporting a CLIP model needs torch and open_clip: "
                                "pip install 'bucketguard[export]'") from exc
    return torch, open_clip


def export_tower(model, path: Path, size: int, torch) -> None:
    class Tower(torch.nn.Module):
        def __init__(self, clip) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, pixels):
            return self.clip.encode_image(pixels)

    tower = Tower(model).eval()
    model.eval()
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(tower, (example,), str(path), input_names=["pixels"], output_names=["embeddings"],
                          dynamic_axes={"pixels": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=17,
                          dynamo=False)


def build(out: Path, model_name: str = "ViT-L-14", pretrained: str | None = "openai", *,
          fp16: bool = False, seed: int = 0) -> Path:
    """Export the image tower and compute the concept table; `pretrained` None/"none": random weights from
    `seed` (torch.manual_seed), for tests."""
    torch, open_clip = _imports()
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None if pretrained in (None, "none") else pretrained)
    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple | list)
               else model.visual.image_size)
    export_tower(model, out / "tower.onnx", size, torch)
    if fp16:
        write_fp16_variant(out / "tower.onnx", out / "tower.fp16.onnx")
    rules_text = resources.files("inference.data").joinpath("csam_concepts.json").read_text(encoding="utf-8")
    (out / "rules.json").write_text(rules_text, encoding="utf-8")
    words = ConceptRules.load(out / "rules.json").words
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        text = model.encode_text(tokenizer(words)).float()
    table = (text / text.norm(dim=-1, keepdim=True)).numpy().astype(np.float32)
    np.save(out / "concepts.npy", table)
    mean = list(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = list(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    write_manifest(out, {
        "name": f"clip-{model_name}-{pretrained or 'random'}",
        "version": f"open_clip-{open_clip.__version__}",
        "kind": "clip-concepts",
        "models": {"image": {"file": "tower.onnx", "input": "pixels", "outputs": ["embeddings"],
                             "size": [size, size], "layout": "NCHW", "colour": "RGB", "scale": 1.0 / 255.0,
                             "mean": mean, "std": std,
                             "fp16_file": "tower.fp16.onnx" if fp16 else None}},
        "tables": {"concepts": "concepts.npy", "rules": "rules.json"},
        "signals": list(SIGNALS),
        "files": ["tower.onnx", "concepts.npy", "rules.json", *(["tower.fp16.onnx"] if fp16 else [])],
        "licences": {"tower.onnx": "weights as licensed by their source (OpenAI CLIP: MIT)"},
        "source": {"model": model_name, "pretrained": pretrained, "calibrated": model_name == "ViT-L-14"
                   and pretrained == "openai"},
    })
    return out
