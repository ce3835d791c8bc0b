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

from proxy.app import build_app
from proxy.cli import main
from proxy.commands.output import print_table
from proxy.config import load_config
from proxy.screening.testimage import generate_png
from tests.support.proxy import CLIENT_BUCKET, new_bucket, start_in_process, write_config

LONG_KEY = "media/" + "a-very-long-key-segment-" * 6 + "end.png"


def bucketguard(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a process whose stdout is a pipe."""
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def caught(moto_server, tmp_path_factory: pytest.TempPathFactory):
    """A proxy with the real pipeline (no detectors) that refused the test image under a long key."""
    tmp = tmp_path_factory.mktemp("cli-output")
    bucket = new_bucket(moto_server)
    path = write_config(tmp, moto_server, bucket)
    config = load_config(path)
    proxy = start_in_process(config, moto_server, bucket, path, app=build_app(config))
    try:
        with pytest.raises(botocore.exceptions.ClientError):
            proxy.client().put_object(Bucket=CLIENT_BUCKET, Key=LONG_KEY, Body=generate_png(),
                                      ContentType="image/png")
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (10, 90, 30)).save(buffer, "PNG")
        # No detectors: the shipped policy defers it (it lands, to be scanned later), so the bucket has an object.
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="media/benign.png", Body=buffer.getvalue(),
                                  ContentType="image/png")
        yield proxy
    finally:
        proxy.stop()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real command in this process; its stdout is captured, so not a terminal (as when piped)."""
    status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_piped_quarantine_list_is_tsv_with_whole_columns(caught, capsys: pytest.CaptureFixture[str]) -> None:
    piped = bucketguard("quarantine", "list", "--config", str(caught.config_path))  # a real pipe
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert lines[0].split("\t") == ["id", "date", "action", "rule", "category", "key", "size", "status", "hold"]
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) >= 1 and all(len(r) == 9 for r in rows)
    row = next(r for r in rows if r[5].endswith(LONG_KEY))
    assert len(row[0]) == 32 and row[2] == "quarantine" and row[3] == "builtin-test-image"
    as_json = json.loads(cli(capsys, "quarantine", "list", "--config", str(caught.config_path), "--json")[1])
    assert row[0] in {i["id"] for i in as_json}
    status, shown, _ = cli(capsys, "quarantine", "show", row[0], "--config", str(caught.config_path))
    assert status == 0 and f"key\t{LONG_KEY}" in shown.splitlines()
    assert "seq\ttime\tevent\tactor\tdetail" in shown


def test_scan_and_evidence_speak_json(caught, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(capsys, "scan", "--config", str(caught.config_path), "--dry-run", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["objects"] >= 1 and report["dry_run"] is True
    status, piped, err = cli(capsys, "scan", "--config", str(caught.config_path), "--dry-run", "--rescan",
                             "--no-progress")
    assert status == 0, err
    assert piped.startswith("outcome\tobjects\n")
    if report["rules"]:
        assert "\n\nrule\tobjects\n" in piped
    status, out, _ = cli(capsys, "evidence", "verify", "--config", str(caught.config_path), "--json")
    assert status == 0 and json.loads(out)["ok"] is True


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


def test_screen_without_detectors_says_so(tmp_path: Path, test_pack_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    benign, test_image = tmp_path / "benign.png", tmp_path / "test.png"
    Image.new("RGB", (96, 64), (40, 120, 200)).save(benign)
    test_image.write_bytes(generate_png())
    status, out, err = cli(capsys, "screen", str(benign))
    assert status == 3, out + err
    assert "no detectors configured" in err and "did not answer" not in out + err
    assert out.startswith(f"{benign}: unscreened")
    status, out, _ = cli(capsys, "screen", "--json", str(benign), str(test_image))
    assert status == 1
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["unscreened", "quarantine"]
    status, out, err = cli(capsys, "screen", "--pack", str(test_pack_path), str(benign))
    assert "no detectors configured" not in err
    assert status in (0, 1) and "unscreened" not in out


def test_policy_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "--signals", '{"nsfw": 0.1}', "--json", "--presets"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == {"action": "allow", "rule": "", "category": "", "reason": "no rule fired"}
    assert set(out["presets"]) == {"strict", "balanced", "lenient"}
