"""benchmarks/load_and_fault.py works: its short mode (20 s of 16 clients, every component killed with SIGKILL
and restarted) ends with a clean audit of the real bucket and the evidence chain. The long run is for the note."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_load_and_fault_run_audits_clean() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_and_fault.py"), "--seconds", "20",
                             "--clients", "16", "--settle", "60"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    assert "violations: 0" in out
    assert "evidence chain intact" in out
    kills = dict(re.findall(r"(upstream|inference|proxy) (\d+) \(", out))
    assert set(kills) == {"upstream", "inference", "proxy"} and all(int(n) >= 1 for n in kills.values()), out
    ok = int(re.search(r"^all\s+(\d+)\s+(\d+)", out, re.MULTILINE).group(1))
    assert ok > 0, "some uploads must have succeeded for the audit to mean anything"
