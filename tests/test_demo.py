"""`bucketguard demo` runs on a fresh checkout: a real S3 server, the proxy, pict-rs-style uploads; its state lives
in the user's data folder (or one it is given), never in the working directory, and each run starts clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def demo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", "demo", "--port", "0", "--no-detectors", *args],
                          capture_output=True, text=True, timeout=180, cwd=cwd,
                          env={"PATH": "", "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})})


def quarantined(config: Path) -> list[dict]:
    listing = subprocess.run([sys.executable, "-m", "proxy.cli", "quarantine", "list", "--json", "--config",
                              str(config)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    return json.loads(listing.stdout)


def test_demo_runs_and_reports(tmp_path: Path) -> None:
    """Two runs with the default folder: state under $XDG_DATA_HOME, nothing in the working directory, and the
    second run shows only its own catches."""
    work = tmp_path / "checkout"
    work.mkdir()
    env = {"COLUMNS": "80", "XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path / "home")}
    result = demo(cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert rows[0] == ["pict-rs", "key", "type", "bytes", "stored", "read back"]
    assert all(len(row) == 6 for row in rows), "piped, the summary keeps every column whole (no 80-column cut)"
    assert [r[4] for r in rows[1:]].count("landed") == 6 and [r[5] for r in rows[1:]].count("byte-exact") == 6
    assert [r[4] for r in rows[1:]].count("refused (403 AccessDenied)") == 2, result.stdout
    state = tmp_path / "data" / "bucketguard" / "demo"
    assert (state / "bucketguard.toml").exists() and (state / "bucketguard.db").exists()
    assert list(work.iterdir()) == [], "nothing is written into the working directory"
    first = {i["key"] for i in quarantined(state / "bucketguard.toml")}
    assert len(first) == 2

    again = demo("--dir", str(state), "--json", cwd=work)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    refused = {u["key"] for u in report["uploads"] if u["stored"].startswith("refused")}
    assert {i["key"] for i in quarantined(state / "bucketguard.toml")} == refused, \
        "a second run shows only its own catches, not the first run's (whose S3 server is gone)"
    assert not refused & first


def test_demo_never_clears_a_folder_it_did_not_write(tmp_path: Path) -> None:
    real = tmp_path / "etc"
    real.mkdir()
    (real / "bucketguard.toml").write_text("# my real config\n")
    (real / "bucketguard.db").write_bytes(b"precious")
    result = demo("--dir", str(real), cwd=tmp_path)
    assert result.returncode == 1 and "was not written by the demo" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert (real / "bucketguard.db").read_bytes() == b"precious"
    assert sorted(os.listdir(real)) == ["bucketguard.db", "bucketguard.toml"]
