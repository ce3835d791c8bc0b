"""`clip-concepts`: an ONNX CLIP image tower and a concept-embedding table -> concept-group signals.

The pack's `rules.json` names the concept algorithm (`check_for_csam`, horde-safety's deprecated check, or
`nsfw_checker`, its newer `NSFWChecker.check_for_nsfw`); the concept table has one row per phrase of it.
"""

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
        self.session, self.provider = create_session(model_path, options, fp16_path=pack.fp16_path("image"),
                                                     int8_path=pack.int8_path("image"),
                                                     model_name=pack.model_name("image"))
        try:
            self.rules = concepts.load_evaluator(pack.table_path("rules"))
        except (ValueError, KeyError, TypeError) as exc:
            raise PackError(f"{pack.table_path('rules')}: unusable concept rules: {exc}") from exc
        self.algorithm = self.rules.algorithm
        self.calibrated = pack.calibrated_for(self.algorithm)
        table = np.load(pack.table_path("concepts"), allow_pickle=False).astype(np.float32)
        words = self.rules.words
        if table.shape[0] != len(words):
            raise PackError(f"{pack.path}: the concept table has {table.shape[0]} rows for {len(words)} phrases")
        self.table = table / np.linalg.norm(table, axis=1, keepdims=True)
        self.words = words
        if self.provider != "KServeV2":  # a remote server may be down at start: the first upload finds out
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
        return [self.rules.signals(dict(zip(self.words, (float(v) for v in row), strict=True)))
                for row in self.similarities(prepared)]
