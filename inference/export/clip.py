"""`bucketguard model build clip`: an open_clip image tower exported to ONNX, plus its concept table.

Needs the `export` extra (torch, open-clip-torch, onnxscript); run it on any machine that can fetch the
weights (no model hub is needed for `--pretrained none`, which gives random weights for testing).

OpenAI's CLIP weights were trained with QuickGELU (x * sigmoid(1.702 x)). open_clip 3.x builds `ViT-L-14` with
nn.GELU and only warns when the openai weights are loaded into it, so the embeddings (and every threshold
calibrated on them) would drift: the builder asks for QuickGELU whenever the weights are OpenAI's or the model
name says `-quickgelu`, and records the activation in the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from inference.detectors import concepts
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
    # nn.MultiheadAttention's inference fast path is one fused aten op that the ONNX exporter cannot write
    # (torch 2.14 takes it while tracing under no_grad); the plain path computes the same numbers.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(tower, (example,), str(path), input_names=["pixels"], output_names=["embeddings"],
                              dynamic_axes={"pixels": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=17,
                              dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


#: The model and weights the reference thresholds were calibrated on (both concept algorithms).
CALIBRATED = ("ViT-L-14", "openai")
DEFAULT_ALGORITHM = "nsfw_checker"


def quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Whether the tower must be built with QuickGELU: OpenAI's weights, or a `-quickgelu` model name."""
    return pretrained == "openai" or model_name.endswith("-quickgelu")


def create_arguments(model_name: str, pretrained: str | None) -> dict[str, object]:
    """Keyword arguments for `open_clip.create_model`, the activation made explicit."""
    return {"pretrained": None if pretrained in (None, "none") else pretrained,
            "force_quick_gelu": quick_gelu(model_name, pretrained)}


def build(out: Path, model_name: str = "ViT-L-14", pretrained: str | None = "openai", *,
          fp16: bool = False, seed: int = 0, algorithm: str = DEFAULT_ALGORITHM) -> Path:
    """Export the image tower and compute the concept table of `algorithm` (`nsfw_checker` or
    `check_for_csam`); `pretrained` None/"none": random weights from `seed` (torch.manual_seed), for tests."""
    rules_text = concepts.rules_text(algorithm)
    torch, open_clip = _imports()
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    arguments = create_arguments(model_name, pretrained)
    model = open_clip.create_model(model_name, **arguments)
    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple | list)
               else model.visual.image_size)
    export_tower(model, out / "tower.onnx", size, torch)
    if fp16:
        write_fp16_variant(out / "tower.onnx", out / "tower.fp16.onnx")
    (out / "rules.json").write_text(rules_text, encoding="utf-8")
    evaluator = concepts.load_evaluator(out / "rules.json")
    words = evaluator.words
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        text = model.encode_text(tokenizer(words)).float()
    table = (text / text.norm(dim=-1, keepdim=True)).numpy().astype(np.float32)
    np.save(out / "concepts.npy", table)
    calibrated = (model_name.removesuffix("-quickgelu"), pretrained) == CALIBRATED
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
        "signals": list(signal_names(evaluator)),
        "files": ["tower.onnx", "concepts.npy", "rules.json", *(["tower.fp16.onnx"] if fp16 else [])],
        "licences": {"tower.onnx": "weights as licensed by their source (OpenAI CLIP: MIT)"},
        "source": {"model": model_name, "pretrained": pretrained, "concepts": evaluator.algorithm,
                   "activation": "quick_gelu" if arguments["force_quick_gelu"] else "model default",
                   "calibrated": calibrated, "calibrated_for": list(concepts.RULES_FILES) if calibrated else []},
    })
    return out


def signal_names(evaluator: concepts.ConceptEvaluator) -> tuple[str, ...]:
    if evaluator.algorithm == "nsfw_checker":
        from inference.detectors.nsfw_checker import SIGNALS

        return SIGNALS
    return concepts.SIGNALS
