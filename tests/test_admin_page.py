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
from proxy.screening.testimage import generate_png
from tests.support.proxy import CLIENT_BUCKET

ADMIN_TOKEN = "admin-token-for-tests"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CANDIDATES = ("horse", "astronaut", "coffee", "chelsea", "camera", "rocket", "moon", "brick")


def png(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def review_proxy(proxy_factory, test_pack_path: Path, tmp_path: Path):
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
    proxy = proxy_factory(pipeline=True, server=f'admin_token = "{ADMIN_TOKEN}"',
                          inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]',
                          screening=f'policy = "{policy}"')
    s3 = proxy.client()
    for name in ranked[:2]:
        with pytest.raises(botocore.exceptions.ClientError):
            s3.put_object(Bucket=CLIENT_BUCKET, Key=f"media/{name}.png", Body=images[name], ContentType="image/png")
    with pytest.raises(botocore.exceptions.ClientError):
        s3.put_object(Bucket=CLIENT_BUCKET, Key="media/test.png", Body=generate_png(), ContentType="image/png")
    proxy.hits = ranked[:2]
    proxy.images = images
    return proxy


def evidence_events(proxy, event: str) -> int:
    with sqlite3.connect(proxy.config_path.parent / "state.db") as conn:
        return conn.execute("SELECT count(*) FROM evidence_records WHERE event = ?", (event,)).fetchone()[0]


def test_admin_urls_need_the_token(review_proxy) -> None:
    base = review_proxy.endpoint
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
    no_csrf = httpx.post(f"{base}/admin/items/{item_id}/reveal", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert no_csrf.status_code == 403
    assert evidence_events(review_proxy, "reveal") == 0


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/bootstrap dev)")
def test_review_in_a_real_browser(review_proxy, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
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
        page.screenshot(path=str(ARTIFACTS / "admin-review-blurred.png"), full_page=True)

        first = page.locator("article.card").filter(has=page.locator("img")).first
        first.get_by_role("button", name="Reveal (recorded)").click()
        page.wait_for_function("document.querySelector('img[alt^=\"Revealed\"]') !== null")
        assert evidence_events(review_proxy, "reveal") == 1
        page.screenshot(path=str(ARTIFACTS / "admin-review-revealed.png"), full_page=True)

        with page.expect_download() as download_info:
            first.get_by_role("button", name="Export").click()
        archive = tmp_path / "export.zip"
        download_info.value.save_as(archive)
        with zipfile.ZipFile(archive) as package:
            names = package.namelist()
            assert "item.json" in names and any(n.startswith("object.") for n in names)
            content = package.read(next(n for n in names if n.startswith("object.")))
        assert content in review_proxy.images.values()

        key = page.locator("article.card").filter(has=page.locator("img")).nth(1).inner_text()
        released = next(n for n in review_proxy.hits if f"media/{n}.png" in key)
        page.locator("article.card").filter(has=page.locator("img")).nth(1).get_by_role(
            "button", name="Release").click()
        page.wait_for_selector("article.card")
        browser.close()
    assert review_proxy.upstream.get(review_proxy.real_bucket, f"media/{released}.png") == \
        review_proxy.images[released]
    assert evidence_events(review_proxy, "release") == 1
