"""`bucketguard demo` runs on a fresh checkout: a real S3 server, the proxy, pict-rs-style uploads."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_reports(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "demo", "--port", "0", "--dir", str(tmp_path),
                             "--no-detectors"],
                            capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("landed") == 6, result.stdout
    assert result.stdout.count("byte-exact") == 6
    assert result.stdout.count("refused (403 AccessDenied)") == 2, result.stdout
    assert (tmp_path / "bucketguard.toml").exists() and (tmp_path / "bucketguard.db").exists()
