"""`clip-concepts`: an ONNX CLIP image tower and a concept-embedding table -> concept-group signals."""

from __future__ import annotations

import numpy as np
from PIL import Image

from inference.detectors import concepts
from inference.detectors.base import resize_center_crop, to_tensor
from inference.packs import Pack, PackError
from inference.runtime import RuntimeOptions, create_session


class ClipConceptsDetector:
    def __init__(self, pack: Pack, options: RuntimeOptions) -> None:
        self.name = pack.kind
        self.pack_name, self.pack_version = pack.name, pack.version
        model_path = pack.model_path("image")
        self.spec = pack.models["image"]
        self.input_size = self.spec.size
        self.session, self.provider = create_session(model_path, options, fp16_path=pack.fp16_path("image"))
        self.rules = concepts.ConceptRules.load(pack.table_path("rules"))
        table = np.load(pack.table_path("concepts"), allow_pickle=False).astype(np.float32)
        words = self.rules.words
        if table.shape[0] != len(words):
            raise PackError(f"{pack.path}: the concept table has {table.shape[0]} rows for {len(words)} phrases")
        self.table = table / np.linalg.norm(table, axis=1, keepdims=True)
        self.words = words
        self.run([Image.new("RGB", self.input_size)])  # warm-up

    def prepare(self, frame: Image.Image) -> np.ndarray:
        return to_tensor([resize_center_crop(frame.convert("RGB"), self.input_size)], self.spec)[0]

    def similarities(self, prepared: list[np.ndarray]) -> np.ndarray:
        features = self.session.run([self.spec.outputs[0]], {self.spec.input: np.stack(prepared)})[0]
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
        return features @ self.table.T

    def run(self, frames: list[Image.Image]) -> list[dict[str, float]]:
        return self.infer([self.prepare(frame) for frame in frames])

    def infer(self, prepared: list[np.ndarray]) -> list[dict[str, float]]:
        out = []
        for row in self.similarities(prepared):
            decision = concepts.evaluate(self.rules, dict(zip(self.words, (float(v) for v in row), strict=True)))
            out.append(concepts.signals(decision))
        return out
