"""The review page in a real headless browser (Debian's chromium driven by Playwright), and its 401s."""

from __future__ import annotations

import asyncio
import io
import shutil
import sqlite3
import zipfile
from pathlib import Path

import botocore.exceptions
import httpx
import pytest
import skimage.data
from PIL import Image

from inference.engine import Engine
from proxy.admin import thumbnails
from proxy.admin.sessions import LoginThrottle
from proxy.app import build_app
from proxy.config import load_config
from proxy.screening.testimage import generate_png
from proxy.storage.spool import SpooledBody
from tests.support.proxy import CLIENT_BUCKET, new_bucket, start_in_process, write_config

ADMIN_TOKEN = "admin-token-for-tests"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CANDIDATES = ("horse", "astronaut", "coffee", "chelsea", "camera", "rocket", "moon", "brick")


def png(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def review_proxy(moto_server, test_pack_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """One proxy for the module (its tests compare evidence counts before and after what they do). On SQLite only:
    its tests are about access and the page in a browser; the summary test below runs on both databases."""
    tmp_path = tmp_path_factory.mktemp("review")
    images = {name: png(name) for name in CANDIDATES}

    async def margins() -> dict[str, float]:
        engine = Engine.from_packs([test_pack_path])
        try:
            return {n: (await engine.screen(d, "image/png")).signals["clip_underage_margin"]
                    for n, d in images.items()}
        finally:
            await engine.close()

    scores = asyncio.run(margins())
    ranked = sorted(scores, key=scores.get, reverse=True)
    threshold = scores[ranked[1]]
    assert scores[ranked[2]] < threshold, "the test needs two images above the rest"
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nname = "review-me"\nwhen = {{ clip_underage_margin = ">= {threshold}" }}\n'
                      'action = "quarantine"\ncategory = "needs-review"\n')
    bucket = new_bucket(moto_server)
    path = write_config(tmp_path, moto_server, bucket, server=f'admin_token = "{ADMIN_TOKEN}"',
                        inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]',
                        screening=f'policy = "{policy}"')
    config = load_config(path)
    proxy = start_in_process(config, moto_server, bucket, path, app=build_app(config))
    s3 = proxy.client()
    for name in ranked[:2]:
        with pytest.raises(botocore.exceptions.ClientError):
            s3.put_object(Bucket=CLIENT_BUCKET, Key=f"media/{name}.png", Body=images[name], ContentType="image/png")
    with pytest.raises(botocore.exceptions.ClientError):
        s3.put_object(Bucket=CLIENT_BUCKET, Key="media/test.png", Body=generate_png(), ContentType="image/png")
    proxy.hits = ranked[:2]
    proxy.images = images
    try:
        yield proxy
    finally:
        proxy.stop()


def evidence_events(proxy, event: str) -> int:
    with sqlite3.connect(proxy.config_path.parent / "state.db") as conn:
        return conn.execute("SELECT count(*) FROM evidence_records WHERE event = ?", (event,)).fetchone()[0]


def test_admin_urls_need_the_token(review_proxy) -> None:
    base = review_proxy.endpoint
    reveals = evidence_events(review_proxy, "reveal")
    with sqlite3.connect(review_proxy.config_path.parent / "state.db") as conn:
        item_id = conn.execute("SELECT id FROM quarantine_items LIMIT 1").fetchone()[0]
    for method, path in (("GET", "/admin/"), ("GET", f"/admin/items/{item_id}"),
                         ("GET", f"/admin/items/{item_id}/thumb"), ("POST", f"/admin/items/{item_id}/reveal"),
                         ("POST", f"/admin/items/{item_id}/export"), ("POST", "/admin/decide/release")):
        response = httpx.request(method, base + path, headers={"Accept": "text/html"})
        assert response.status_code == 401, (method, path)
        assert not response.headers.get("content-type", "").startswith("image/")
    wrong = httpx.get(f"{base}/admin/items/{item_id}/thumb", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.get(f"{base}/admin/items/{item_id}/thumb", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code in (200, 404) and ok.headers["cache-control"].startswith("no-store")
    with httpx.Client() as browser:
        assert browser.post(f"{base}/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
        no_csrf = browser.post(f"{base}/admin/items/{item_id}/reveal")
        assert no_csrf.status_code == 403
    assert evidence_events(review_proxy, "reveal") == reveals


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/bootstrap dev)")
def test_review_in_a_real_browser(review_proxy, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = {e: evidence_events(review_proxy, e) for e in ("reveal", "reported", "release")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(accept_downloads=True)
        response = page.goto(f"{review_proxy.endpoint}/admin/")
        assert response is not None and response.status == 401
        page.get_by_label("Admin token").fill(ADMIN_TOKEN)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_selector("article.card")
        blurred = page.locator("img[alt^='Blurred greyscale thumbnail']")
        assert blurred.count() == 2
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.get_by_text("Hash-list match (builtin-test-image)").count() == 1
        page.screenshot(path=str(SCREENSHOTS / "admin-review-blurred.png"), full_page=True)

        first = page.locator("article.card").filter(has=page.locator("img")).first
        first.get_by_role("button", name="Reveal (recorded)").click()
        page.wait_for_function("document.querySelector('img[alt^=\"Revealed\"]') !== null")
        assert evidence_events(review_proxy, "reveal") == before["reveal"] + 1
        page.screenshot(path=str(SCREENSHOTS / "admin-review-revealed.png"), full_page=True)

        with page.expect_download() as download_info:
            first.get_by_role("button", name="Export").click()
        archive = tmp_path / "export.zip"
        download_info.value.save_as(archive)
        with zipfile.ZipFile(archive) as package:
            names = package.namelist()
            assert "item.json" in names and any(n.startswith("object.") for n in names)
            content = package.read(next(n for n in names if n.startswith("object.")))
        assert content in review_proxy.images.values()

        summary = page.get_by_role("region", name="summary")
        assert summary.locator(".tile", has_text="Caught in total").locator("strong").inner_text() == "3"
        chart = summary.locator("svg[role=img]")
        assert "quarantine" in chart.get_attribute("aria-label")
        assert summary.get_by_text("quarantine by review-me: 2").count() == 1
        bar = first.locator(".signal.fired .bar")
        assert bar.count() == 1 and "clip_underage_margin" in bar.get_attribute("aria-label")
        assert ">= " in bar.get_attribute("aria-label") and "(fired)" in bar.get_attribute("aria-label")
        first.get_by_label("Report reference").fill("NCMEC-12345")
        first.get_by_role("button", name="Mark reported").click()
        page.wait_for_selector("text=NCMEC-12345")
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(SCREENSHOTS / "admin-review-summary-reported.png"), full_page=True)
        with sqlite3.connect(review_proxy.config_path.parent / "state.db") as conn:
            assert conn.execute("SELECT count(*) FROM quarantine_items WHERE report_ref = 'NCMEC-12345'"
                                ).fetchone()[0] == 1
        assert evidence_events(review_proxy, "reported") == before["reported"] + 1

        key = page.locator("article.card").filter(has=page.locator("img")).nth(1).inner_text()
        released = next(n for n in review_proxy.hits if f"media/{n}.png" in key)
        page.locator("article.card").filter(has=page.locator("img")).nth(1).get_by_role(
            "button", name="Release").click()
        page.wait_for_selector("article.card")
        browser.close()
    assert review_proxy.upstream.get(review_proxy.real_bucket, f"media/{released}.png") == \
        review_proxy.images[released]
    assert evidence_events(review_proxy, "release") == before["release"] + 1


def test_login_throttle_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(per_client=3, overall=5, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
    assert throttle.retry_after("a") > 0 and throttle.retry_after("b") == 0
    throttle.failed("b")
    throttle.failed("c")
    assert throttle.retry_after("d") > 0, "the overall limit holds against many addresses"
    now[0] += 61
    assert throttle.retry_after("a") == 0 and throttle.retry_after("d") == 0


async def test_thumbnails_stay_bounded_in_memory(tmp_path: Path) -> None:
    """A 45 MiB object is spooled to disk past 1 MiB, reading stops at 64 MiB, and a huge canvas is refused before
    any pixel is decoded."""
    async def stream(total: int):
        block = bytes(1024 * 1024)
        for _ in range(total // len(block)):
            yield block

    body = await thumbnails.spool(stream(45 * 1024 * 1024), max_bytes=64 * 1024 * 1024, spool_dir=str(tmp_path))
    try:
        assert body.size == 45 * 1024 * 1024 and not body.in_memory
    finally:
        body.close()
    with pytest.raises(thumbnails.ThumbnailError, match="too large for a thumbnail"):
        await thumbnails.spool(stream(thumbnails.THUMB_MAX_BYTES + 1024 * 1024), max_bytes=1 << 40,
                               spool_dir=str(tmp_path))
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, "PNG")  # a few KB on disk, 64 megapixels decoded
    huge = SpooledBody.from_bytes(buffer.getvalue())
    with pytest.raises(thumbnails.ThumbnailError, match="over the thumbnail decode budget"):
        thumbnails.render(huge, reveal=False)
    small = SpooledBody.from_bytes(png("coffee"))
    with Image.open(io.BytesIO(thumbnails.render(small, reveal=False))) as thumb:
        assert max(thumb.size) == thumbnails.THUMB_SIDE and thumb.format == "JPEG"
    with pytest.raises(thumbnails.ThumbnailError, match="not an image"):
        thumbnails.render(SpooledBody.from_bytes(b"not an image at all"), reveal=False)


def test_summary_counts_catches_deferred_scans_and_the_last_backfill(proxy_factory, database_url: str) -> None:
    """No detectors: the test image is caught, a photo lands deferred; a dry-run backfill then lists both. The
    summary's counts are queries over the state database: on SQLite and on PostgreSQL."""
    import json

    from tests.support.cli import run_cli

    proxy = proxy_factory(pipeline=True, server=f'admin_token = "{ADMIN_TOKEN}"', database_url=database_url)
    s3 = proxy.client()
    with pytest.raises(botocore.exceptions.ClientError):
        s3.put_object(Bucket=CLIENT_BUCKET, Key="media/test.png", Body=generate_png(), ContentType="image/png")
    s3.put_object(Bucket=CLIENT_BUCKET, Key="media/photo.png", Body=png("coffee"), ContentType="image/png")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    before = httpx.get(f"{proxy.endpoint}/admin/summary", headers=auth).json()
    assert before["caught_total"] == {"quarantine": 1} and before["caught_today"] == 1
    assert sum(before["pending"].values()) == 1 and before["backfill"] is None
    assert before["by_day"][before["today"]] == {"quarantine": 1}
    scan = run_cli("scan", "--config", str(proxy.config_path), "--dry-run", "--json")
    assert scan.returncode == 0, scan.stderr
    report = json.loads(scan.stdout)
    after = httpx.get(f"{proxy.endpoint}/admin/summary", headers=auth).json()
    backfill = after["backfill"]
    assert backfill["run"] == report["run"] and backfill["dry_run"] is True
    assert backfill["objects"] == report["objects"] == 1 and backfill["waiting"] == 0
    assert backfill["outcomes"] == report["outcomes"]
    page = httpx.get(f"{proxy.endpoint}/admin/", headers=auth).text
    assert f"Last backfill (run {report['run']}" in page and "1 of 1 objects decided" in page
