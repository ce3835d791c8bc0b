"""benchmarks/ run from the product install alone: none of them imports pytest or anything under tests/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "__init__.py")

# Importing pytest or tests.* in the child fails loudly: a None entry in sys.modules makes `import` raise.
ISOLATED = (
    "import runpy, sys; sys.modules['pytest'] = None; sys.modules['tests'] = None; "
    "sys.argv = [sys.argv[1], '--help']; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_every_benchmark_is_checked() -> None:
    assert {p.name for p in SCRIPTS} >= {"proxy_overhead.py", "screening_latency.py", "backfill_rate.py",
                                         "inference_throughput.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_help_without_tests_or_pytest(script: Path) -> None:
    result = subprocess.run([sys.executable, "-c", ISOLATED, str(script)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    source = script.read_text()
    assert "from tests" not in source and "import tests" not in source
