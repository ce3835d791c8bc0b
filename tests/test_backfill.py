"""`bucketguard scan` over a real S3 server with thousands of mixed objects, killed with -9 and resumed."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from proxy.screening.testimage import generate_png
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, new_bucket, write_config

#: The issue asks for 2,000; an environment variable may lower it on a slow machine.
OBJECTS = int(os.environ.get("BUCKETGUARD_BACKFILL_OBJECTS", "2000"))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "moon", "brick")


def corpus(count: int) -> dict[str, tuple[bytes, str]]:
    rng = random.Random(5)
    sources = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((96, 72)) for name in PHOTOS]
    test = Image.open(io.BytesIO(generate_png())).convert("RGB")
    objects: dict[str, tuple[bytes, str]] = {}
    for index in range(count):
        kind = index % 20
        buffer = io.BytesIO()
        if kind == 0:  # the test image, re-encoded as pict-rs would
            test.resize((448 - index % 50, 336 - index % 40)).save(buffer, "WEBP", quality=60 + index % 30)
            objects[f"media/{index:05d}-t.webp"] = (buffer.getvalue(), "image/webp")
        elif kind == 1:  # corrupt
            objects[f"media/{index:05d}-c.jpg"] = (b"\xff\xd8\xff\xe0" + rng.randbytes(300), "image/jpeg")
        elif kind == 2:  # not media
            objects[f"other/{index:05d}.json"] = (json.dumps({"n": index}).encode(), "application/json")
        else:  # benign photographs, each with distinct bytes
            image = sources[index % len(sources)].copy()
            image.putpixel((index % 96, (index // 96) % 72), (index % 256, 0, 0))
            image.save(buffer, "JPEG", quality=50 + index % 45)
            objects[f"media/{index:05d}.jpg"] = (buffer.getvalue(), "image/jpeg")
    return objects


def fill(server: S3Server, bucket: str, objects: dict[str, tuple[bytes, str]]) -> None:
    client = server.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: client.put_object(Bucket=bucket, Key=item[0], Body=item[1][0],
                                                     ContentType=item[1][1]), objects.items()))


def scan(config: Path, report: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "proxy.cli", "scan", "--config", str(config), "--bucket",
                                CLIENT_BUCKET, "--no-progress", "--report", str(report), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, out + err
    return process


def setup(server: S3Server, folder: Path, test_pack: Path, objects) -> tuple[Path, str]:
    folder.mkdir()
    bucket = new_bucket(server)
    fill(server, bucket, objects)
    policy = folder / "policy.toml"
    policy.write_text('on_undecodable = "reject"\non_non_media = "flag"\n[[rule]]\nname = "nudity"\n'
                      'when = { nsfw = ">= 0.9" }\naction = "flag"\n')
    config = write_config(folder, server, bucket, inference=f'mode = "in-process"\npacks = ["{test_pack}"]',
                          screening=f'policy = "{policy}"')
    return config, bucket


def comparable(report: dict) -> dict:
    return {k: report[k] for k in ("objects", "outcomes", "rules", "hits")}


@pytest.mark.timeout(900)
def test_backfill_accounts_for_every_object_and_resumes_after_kill_9(moto_server, test_pack_path, tmp_path) -> None:
    objects = corpus(OBJECTS)
    hits = {k for k in objects if k.endswith("-t.webp")}

    first_config, first_bucket = setup(moto_server, tmp_path / "a", test_pack_path, objects)
    scan(first_config, tmp_path / "a.json")
    uninterrupted = json.loads((tmp_path / "a.json").read_text())
    assert uninterrupted["objects"] == OBJECTS
    outcomes = uninterrupted["outcomes"]
    assert outcomes["quarantined"] == len(hits)
    assert outcomes["rejected"] == sum(k.endswith("-c.jpg") for k in objects)
    assert outcomes["flagged"] == sum(k.endswith(".json") for k in objects)
    assert outcomes["clean"] == OBJECTS - len(hits) - outcomes["rejected"] - outcomes["flagged"]
    assert "pending" not in outcomes
    remaining = set(moto_server.keys(first_bucket))
    assert remaining == set(objects) - hits - {k for k in objects if k.endswith("-c.jpg")}

    second_config, second_bucket = setup(moto_server, tmp_path / "b", test_pack_path, objects)
    database = tmp_path / "b" / "state.db"
    process = scan(second_config, tmp_path / "b-killed.json", wait=False)
    target = random.Random().randint(OBJECTS // 10, OBJECTS // 2)
    deadline = time.monotonic() + 300
    decided = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(database) as conn:
                decided = conn.execute("SELECT count(*) FROM scan_objects WHERE outcome != 'pending'").fetchone()[0]
        except sqlite3.OperationalError:
            decided = 0
        if decided >= target:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the scan finished before it could be killed; raise the object count"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    scan(second_config, tmp_path / "b.json")
    resumed = json.loads((tmp_path / "b.json").read_text())
    assert resumed["resumed"] is True
    assert comparable(resumed) == comparable(uninterrupted)
    assert set(moto_server.keys(second_bucket)) == remaining
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT key) FROM scan_objects").fetchone() == (OBJECTS, OBJECTS)
        recorded = conn.execute("SELECT key, count(*) FROM quarantine_items WHERE action = 'quarantine' "
                                "GROUP BY key").fetchall()
    assert {key for key, _ in recorded} == hits and {count for _, count in recorded} == {1}

    again = tmp_path / "again.json"
    scan(second_config, again)
    assert json.loads(again.read_text())["outcomes"] == {"skipped": len(remaining)}, "decided objects are skipped"


def test_folder_scan_is_dry_run_only(tmp_path, moto_server, test_pack_path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / "t.png").write_bytes(generate_png())
    (folder / "ok.txt").write_text("hello")
    config, _ = setup(moto_server, tmp_path / "cfg", test_pack_path, {})
    refused = subprocess.run([sys.executable, "-m", "proxy.cli", "scan", "--config", str(config), "--path",
                              str(folder)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--dry-run" in refused.stderr
    report = tmp_path / "r.json"
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "scan", "--config", str(config), "--path",
                             str(folder), "--dry-run", "--no-progress", "--report", str(report)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["outcomes"] == {"flagged": 1, "would-quarantine": 1}
    assert (folder / "t.png").exists()


def test_backfill_leaves_pictrs_health_check_object_and_rejects_other_non_media(moto_server, test_pack_path,
                                                                                 tmp_path) -> None:
    """pict-rs 0.5.17+ keeps a 0-byte `health-check` object in its bucket; the shipped default rejects non-media,
    and a backfill must not take the empty object for it (it would delete it on every scan)."""
    objects = {"health-check": (b"", "application/octet-stream"),
               "media/notes.json": (b'{"not": "media"}', "application/json")}
    config, bucket = setup(moto_server, tmp_path / "h", test_pack_path, objects)
    (tmp_path / "h" / "policy.toml").write_text('on_undecodable = "reject"\n')  # the shipped on_non_media
    scan(config, tmp_path / "h.json")
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["outcomes"] == {"clean": 1, "rejected": 1}
    assert moto_server.keys(bucket) == ["health-check"]


def test_scan_in_pass_through_mode_names_its_bucket(moto_server, test_pack_path, tmp_path) -> None:
    """`[upstream] buckets = "*"` serves every bucket: the scan needs --bucket, then scans that bucket."""
    objects = {"media/a.jpg": corpus(4)["media/00003.jpg"]}
    config, bucket = setup(moto_server, tmp_path / "p", test_pack_path, objects)
    text = config.read_text()
    mapping = f'[upstream.buckets]\n{CLIENT_BUCKET} = "{bucket}"\n'
    assert mapping in text
    passthrough = 'addressing = "path"\nbuckets = "*"\n'
    config.write_text(text.replace(mapping, "").replace('addressing = "path"\n', passthrough))
    missing = subprocess.run([sys.executable, "-m", "proxy.cli", "scan", "--config", str(config), "--no-progress"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "--bucket is needed" in missing.stderr and "Traceback" not in missing.stderr
    report = tmp_path / "p.json"
    process = subprocess.run([sys.executable, "-m", "proxy.cli", "scan", "--config", str(config), "--bucket", bucket,
                              "--no-progress", "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    assert json.loads(report.read_text())["outcomes"] == {"clean": 1}
