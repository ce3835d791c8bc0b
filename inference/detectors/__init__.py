"""Detectors, one module per kind; `load_detector` picks the one a pack's manifest names."""

from __future__ import annotations

from inference.detectors.base import Detector
from inference.packs import Pack, PackError
from inference.runtime import RuntimeOptions

KINDS = ("clip-concepts", "nsfw-age", "test")


def load_detector(pack: Pack, options: RuntimeOptions) -> Detector:
    if pack.kind in ("clip-concepts", "test"):
        from inference.detectors.clip_concepts import ClipConceptsDetector

        return ClipConceptsDetector(pack, options)
    if pack.kind == "nsfw-age":
        from inference.detectors.nsfw_age import NsfwAgeDetector

        return NsfwAgeDetector(pack, options)
    raise PackError(f"{pack.path}: unknown detector kind {pack.kind!r} (known: {', '.join(KINDS)})")


__all__ = ["KINDS", "Detector", "load_detector"]
