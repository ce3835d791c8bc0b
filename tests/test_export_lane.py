"""The export lane, run from the main suite: tests/export in `.venv-export`, where torch and open_clip live.

torch is never installed beside the proxy (it would pull a CUDA build into the proxy's venv); `scripts/bootstrap
dev` makes `.venv-export` with the `export` extra, and this test runs the lane there and reports its outcome.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPORT_PYTHON = ROOT / ".venv-export" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_clip_export_lane_passes_in_its_own_venv() -> None:
    assert EXPORT_PYTHON.exists(), ".venv-export is missing: run `scripts/bootstrap dev` (it makes the export venv)"
    result = subprocess.run([str(EXPORT_PYTHON), "-m", "pytest", "--noconftest", "-q", "-p", "no:cacheprovider",
                             "tests/export"], cwd=ROOT, capture_output=True, text=True, timeout=880)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    assert "2 passed" in tail, tail
