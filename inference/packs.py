"""Model packs: a folder with `manifest.json`, the `.onnx` files and any tables, every file checksummed.

manifest.json:
    {"name": "nsfw-age", "version": "1", "kind": "nsfw-age",
     "models": {"nsfw": {"file": "open-nsfw.onnx", "input": "input:0", "outputs": ["outputs"],
                         "size": [224, 224], "layout": "NHWC", "colour": "BGR", "scale": 1.0,
                         "mean": [104, 117, 123], "std": [1, 1, 1]}, ...},
     "tables": {"concepts": "concepts.npy"},
     "signals": ["nsfw", "explicit", ...],
     "files": {"open-nsfw.onnx": "<sha256>", ...},
     "licences": {"open-nsfw.onnx": "BSD-2-Clause (Yahoo open_nsfw)"},
     "source": {...}}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MANIFEST = "manifest.json"


class PackError(ValueError):
    """A pack that cannot be used: the message names the file or field."""


@dataclass(frozen=True)
class ModelSpec:
    """One ONNX model in a pack and how its input is prepared."""

    file: str
    input: str
    outputs: tuple[str, ...]
    size: tuple[int, int]  # width, height
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    colour: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: A float16 copy of `file` (float32 inputs and outputs), used on CUDA when fp16 is asked for.
    fp16_file: str | None = None
    #: An int8 (statically quantised, checked against fp32: inference.export.int8) copy of `file`, used on
    #: the CPU when int8 is asked for.
    int8_file: str | None = None


@dataclass(frozen=True)
class Pack:
    path: Path
    name: str
    version: str
    kind: str
    models: dict[str, ModelSpec]
    tables: dict[str, str]
    signals: tuple[str, ...]
    files: dict[str, str]
    licences: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    def model_path(self, role: str) -> Path:
        try:
            return self.path / self.models[role].file
        except KeyError as exc:
            raise PackError(f"{self.path / MANIFEST}: models.{role} is missing (needed by kind {self.kind!r})") from exc

    def int8_path(self, role: str) -> Path | None:
        """The checksummed int8 variant of a model, when the pack has one."""
        spec = self.models.get(role)
        return self.path / spec.int8_file if spec is not None and spec.int8_file else None

    def model_name(self, role: str) -> str:
        """The model's name on a KServe v2 server (Triton's repository folder): `<pack>-<role>`."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.name}-{role}")

    def fp16_path(self, role: str) -> Path | None:
        """The checksummed float16 variant of a model, when the pack has one."""
        spec = self.models.get(role)
        return self.path / spec.fp16_file if spec is not None and spec.fp16_file else None

    def calibrated_for(self, algorithm: str) -> bool:
        """Whether the manifest says the concept thresholds of `algorithm` hold for this pack's model.

        Written by the clip builder (`source.calibrated`, and `source.calibrated_for` naming the algorithms):
        true only for the model the reference thresholds were set on (ViT-L-14/openai).
        """
        if not self.source.get("calibrated"):
            return False
        named = self.source.get("calibrated_for")
        return named is None or algorithm in named

    def table_path(self, role: str) -> Path:
        try:
            return self.path / self.tables[role]
        except KeyError as exc:
            raise PackError(f"{self.path / MANIFEST}: tables.{role} is missing (needed by kind {self.kind!r})") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_spec(role: str, raw: Any, where: Path) -> ModelSpec:
    if not isinstance(raw, dict):
        raise PackError(f"{where}: models.{role} must be an object")
    try:
        size = raw["size"]
        return ModelSpec(
            file=str(raw["file"]), input=str(raw["input"]), outputs=tuple(str(o) for o in raw["outputs"]),
            size=(int(size[0]), int(size[1])), layout=raw.get("layout", "NCHW"), colour=raw.get("colour", "RGB"),
            scale=float(raw.get("scale", 1.0 / 255.0)),
            mean=tuple(float(v) for v in raw.get("mean", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            std=tuple(float(v) for v in raw.get("std", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
            fp16_file=str(raw["fp16_file"]) if raw.get("fp16_file") else None,
            int8_file=str(raw["int8_file"]) if raw.get("int8_file") else None,
        )
    except KeyError as exc:
        raise PackError(f"{where}: models.{role}.{exc.args[0]} is missing") from exc
    except (TypeError, ValueError, IndexError) as exc:
        raise PackError(f"{where}: models.{role} is malformed: {exc}") from exc


def read_manifest(path: Path) -> dict[str, Any]:
    where = path / MANIFEST
    if not where.is_file():
        raise PackError(f"{path}: not a model pack (no {MANIFEST})")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise PackError(f"{where}: must hold a JSON object")
    return manifest


def verify_files(path: Path, files: dict[str, str]) -> None:
    """Every listed file exists and has its sha256; the error names the first that does not."""
    for name, expected in sorted(files.items()):
        target = (path / name).resolve()
        if path.resolve() not in target.parents:
            raise PackError(f"{path / MANIFEST}: files.{name} points outside the pack")
        if not target.is_file():
            raise PackError(f"{path}: missing file {name} (listed in {MANIFEST})")
        actual = sha256_file(target)
        if actual != expected:
            raise PackError(f"{path}: checksum mismatch for {name}: manifest says {expected}, file has {actual}")


def load_pack(path: str | Path, *, verify: bool = True) -> Pack:
    """Read a pack's manifest and (by default) verify every file's checksum."""
    path = Path(path)
    manifest = read_manifest(path)
    where = path / MANIFEST
    try:
        name, version, kind = str(manifest["name"]), str(manifest["version"]), str(manifest["kind"])
        files = {str(k): str(v) for k, v in manifest["files"].items()}
    except KeyError as exc:
        raise PackError(f"{where}: {exc.args[0]} is missing") from exc
    except AttributeError as exc:
        raise PackError(f"{where}: files must be an object of name -> sha256") from exc
    models = {role: _model_spec(role, raw, where) for role, raw in (manifest.get("models") or {}).items()}
    tables = {str(k): str(v) for k, v in (manifest.get("tables") or {}).items()}
    for role, spec in models.items():
        if spec.file not in files:
            raise PackError(f"{where}: models.{role}.file {spec.file} has no checksum in files")
        if spec.fp16_file is not None and spec.fp16_file not in files:
            raise PackError(f"{where}: models.{role}.fp16_file {spec.fp16_file} has no checksum in files")
        if spec.int8_file is not None and spec.int8_file not in files:
            raise PackError(f"{where}: models.{role}.int8_file {spec.int8_file} has no checksum in files")
    for role, table in tables.items():
        if table not in files:
            raise PackError(f"{where}: tables.{role} {table} has no checksum in files")
    if verify:
        verify_files(path, files)
    return Pack(path, name, version, kind, models, tables, tuple(manifest.get("signals") or ()), files,
                dict(manifest.get("licences") or {}), dict(manifest.get("source") or {}))


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Fill in the sha256 of every file in `manifest["files"]` and write manifest.json."""
    manifest = dict(manifest)
    manifest["files"] = {name: sha256_file(path / name) for name in manifest["files"]}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
