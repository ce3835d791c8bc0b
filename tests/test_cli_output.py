"""Command output that fits its reader: TSV when piped, tables on a terminal, --json for scripts, and a
`screen` without detectors that says so (with exit codes that mean something)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest
from PIL import Image

from proxy.commands.output import print_table
from proxy.screening.testimage import generate_png
from tests.support.proxy import CLIENT_BUCKET

LONG_KEY = "media/" + "a-very-long-key-segment-" * 6 + "end.png"


def bucketguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def caught(proxy_factory):
    """A proxy with the real pipeline (no detectors) that refused the test image under a long key."""
    proxy = proxy_factory(pipeline=True)
    with pytest.raises(botocore.exceptions.ClientError):
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key=LONG_KEY, Body=generate_png(), ContentType="image/png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 90, 30)).save(buffer, "PNG")
    # No detectors: the shipped policy defers it (it lands, to be scanned later), so the bucket has an object.
    proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="media/benign.png", Body=buffer.getvalue(),
                              ContentType="image/png")
    return proxy


def test_piped_quarantine_list_is_tsv_with_whole_columns(caught) -> None:
    run = bucketguard("quarantine", "list", "--config", str(caught.config_path))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split("\t") == ["id", "date", "action", "rule", "category", "key", "size", "status", "hold"]
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) >= 1 and all(len(r) == 9 for r in rows)
    row = next(r for r in rows if r[5].endswith(LONG_KEY))
    assert len(row[0]) == 32 and row[2] == "quarantine" and row[3] == "builtin-test-image"
    as_json = json.loads(bucketguard("quarantine", "list", "--config", str(caught.config_path), "--json").stdout)
    assert row[0] in {i["id"] for i in as_json}
    shown = bucketguard("quarantine", "show", row[0], "--config", str(caught.config_path))
    assert shown.returncode == 0 and f"key\t{LONG_KEY}" in shown.stdout.splitlines()
    assert "seq\ttime\tevent\tactor\tdetail" in shown.stdout


def test_scan_and_evidence_speak_json(caught) -> None:
    scan = bucketguard("scan", "--config", str(caught.config_path), "--dry-run", "--json")
    assert scan.returncode == 0, scan.stderr
    report = json.loads(scan.stdout)
    assert report["objects"] >= 1 and report["dry_run"] is True
    piped = bucketguard("scan", "--config", str(caught.config_path), "--dry-run", "--rescan", "--no-progress")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("outcome\tobjects\n")
    if report["rules"]:
        assert "\n\nrule\tobjects\n" in piped.stdout
    verify = bucketguard("evidence", "verify", "--config", str(caught.config_path), "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True


def test_a_terminal_gets_a_titled_table() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    print_table("quarantine: 1 item(s)", ("id", "key"), [("abc", "media/x.png")], stream=screen)
    assert "quarantine: 1 item(s)" in screen.getvalue() and "media/x.png" in screen.getvalue()
    pipe = io.StringIO()
    print_table("quarantine: 1 item(s)", ("id", "key"), [("a\tb", "line\nbreak")], stream=pipe)
    assert pipe.getvalue() == "id\tkey\na b\tline break\n"


def test_screen_without_detectors_says_so(tmp_path: Path, test_pack_path: Path) -> None:
    benign, test_image = tmp_path / "benign.png", tmp_path / "test.png"
    Image.new("RGB", (96, 64), (40, 120, 200)).save(benign)
    test_image.write_bytes(generate_png())
    alone = bucketguard("screen", str(benign))
    assert alone.returncode == 3, alone.stdout + alone.stderr
    assert "no detectors configured" in alone.stderr and "did not answer" not in alone.stdout + alone.stderr
    assert alone.stdout.startswith(f"{benign}: unscreened")
    both = bucketguard("screen", "--json", str(benign), str(test_image))
    assert both.returncode == 1
    verdicts = [json.loads(line) for line in both.stdout.splitlines()]
    assert [v["action"] for v in verdicts] == ["unscreened", "quarantine"]
    with_pack = bucketguard("screen", "--pack", str(test_pack_path), str(benign))
    assert "no detectors configured" not in with_pack.stderr
    assert with_pack.returncode in (0, 1) and "unscreened" not in with_pack.stdout


def test_policy_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli import main

    assert main(["policy", "explain", "--signals", '{"nsfw": 0.1}', "--json", "--presets"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == {"action": "allow", "rule": "", "category": "", "reason": "no rule fired"}
    assert set(out["presets"]) == {"strict", "balanced", "lenient"}
