"""Attacks on the review page (issue 9, "who may do what"), judged by what the real bucket and the evidence log hold.

One proxy for the module: the real pipeline in front of moto, no detectors, the admin token set and the spool
folder in a temporary place. The built-in test image is uploaded by an S3 client and refused, so there is a
quarantined item with its bytes kept to attack.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from collections.abc import Iterator

import botocore.exceptions
import httpx
import pytest

from proxy.app import build_app
from proxy.config import load_config
from proxy.screening.testimage import generate_png
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, RunningProxy, new_bucket, start_in_process, write_config

TOKEN = "adversarial-admin-token-0123456789"
KEY = "media/evidence.png"


@pytest.fixture(scope="module")
def admin_proxy(moto_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    tmp = tmp_path_factory.mktemp("admin-attacks")
    (tmp / "spool").mkdir()
    bucket = new_bucket(moto_server)
    path = write_config(tmp, moto_server, bucket, server=f'admin_token = "{TOKEN}"',
                        limits=f'spool_dir = "{tmp / "spool"}"')
    config = load_config(path)
    proxy = start_in_process(config, moto_server, bucket, path, app=build_app(config))
    with pytest.raises(botocore.exceptions.ClientError):
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key=KEY, Body=generate_png(), ContentType="image/png")
    try:
        yield proxy
    finally:
        proxy.stop()


def item_id(proxy: RunningProxy) -> str:
    with sqlite3.connect(proxy.config_path.parent / "state.db") as conn:
        return conn.execute("SELECT id FROM quarantine_items WHERE key = ?", (KEY,)).fetchone()[0]


def events(proxy: RunningProxy, event: str) -> int:
    with sqlite3.connect(proxy.config_path.parent / "state.db") as conn:
        return conn.execute("SELECT count(*) FROM evidence_records WHERE event = ?", (event,)).fetchone()[0]


def login(proxy: RunningProxy, client: httpx.Client) -> str:
    """Log in through the form; returns the page's CSRF token."""
    response = client.post(f"{proxy.endpoint}/admin/login", data={"token": TOKEN})
    assert response.status_code == 303, response.text
    page = client.get(f"{proxy.endpoint}/admin/")
    assert page.status_code == 200
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_the_old_derived_cookie_is_worthless(admin_proxy: RunningProxy) -> None:
    """The cookie used to be HMAC(token, "session"): anyone who saw one cookie had a session for ever."""
    forged = hmac.new(TOKEN.encode(), b"session", hashlib.sha256).hexdigest()
    response = httpx.get(f"{admin_proxy.endpoint}/admin/items/{item_id(admin_proxy)}",
                         cookies={"bucketguard_admin": forged})
    assert response.status_code == 401


def test_logout_revokes_the_session_server_side(admin_proxy: RunningProxy) -> None:
    with httpx.Client() as browser:
        csrf = login(admin_proxy, browser)
        stolen = browser.cookies.get("bucketguard_admin", path="/admin")
        assert stolen
        out = browser.post(f"{admin_proxy.endpoint}/admin/logout", data={"csrf": csrf})
        assert out.status_code == 303
    replay = httpx.get(f"{admin_proxy.endpoint}/admin/items/{item_id(admin_proxy)}",
                       cookies={"bucketguard_admin": stolen})
    assert replay.status_code == 401
    export = httpx.post(f"{admin_proxy.endpoint}/admin/items/{item_id(admin_proxy)}/export",
                        cookies={"bucketguard_admin": stolen}, data={"csrf": csrf})
    assert export.status_code == 401 and not export.content.startswith(b"PK")


def test_cross_site_release_without_csrf_restores_nothing(admin_proxy: RunningProxy) -> None:
    with httpx.Client() as browser:
        login(admin_proxy, browser)
        forged = browser.post(f"{admin_proxy.endpoint}/admin/decide/release", data={"ids": item_id(admin_proxy)})
        assert forged.status_code == 403
        wrong = browser.post(f"{admin_proxy.endpoint}/admin/decide/release",
                             data={"ids": item_id(admin_proxy), "csrf": "guessed"})
        assert wrong.status_code == 403
    assert admin_proxy.upstream.keys(admin_proxy.real_bucket) == []
    assert events(admin_proxy, "release") == 0


def test_unknown_or_hostile_item_ids_are_404(admin_proxy: RunningProxy) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = admin_proxy.endpoint
    for bad in ("0" * 32, "nope", "..%2f..%2fstate.db", "%00"):
        for method, path in (("GET", f"/admin/items/{bad}"), ("GET", f"/admin/items/{bad}/thumb"),
                             ("POST", f"/admin/items/{bad}/reveal"), ("POST", f"/admin/items/{bad}/export"),
                             ("POST", f"/admin/items/{bad}/reported")):
            response = httpx.request(method, base + path, headers=auth, data={"ref": "x"})
            assert response.status_code == 404, (method, path, response.status_code, response.text)
    assert events(admin_proxy, "reveal") == 0 and events(admin_proxy, "export") == 0


def test_export_leaves_no_copy_behind(admin_proxy: RunningProxy) -> None:
    spool = admin_proxy.config_path.parent / "spool"
    with httpx.Client() as browser:
        csrf = login(admin_proxy, browser)
        response = browser.post(f"{admin_proxy.endpoint}/admin/items/{item_id(admin_proxy)}/export",
                                data={"csrf": csrf})
        assert response.status_code == 200 and response.content.startswith(b"PK")
        assert generate_png() in response.content  # stored, not deflated: the caught bytes as they were
        # A download abandoned after the first bytes: the package must not stay behind either.
        with browser.stream("POST", f"{admin_proxy.endpoint}/admin/items/{item_id(admin_proxy)}/export",
                            data={"csrf": csrf}) as partial:
            assert partial.status_code == 200
            next(partial.iter_raw(1024))
    for _ in range(50):
        left = [p for p in spool.rglob("*") if "export" in p.name]
        if not left:
            break
        time.sleep(0.1)
    assert left == [], left
    assert events(admin_proxy, "export") == 2


def test_what_the_database_holds_is_no_session(admin_proxy: RunningProxy) -> None:
    """A reader of the state database (a backup, a read replica) sees the sessions' rows: none of it is a cookie."""
    with httpx.Client() as browser:
        login(admin_proxy, browser)
        cookie = browser.cookies.get("bucketguard_admin", path="/admin")
        with sqlite3.connect(admin_proxy.config_path.parent / "state.db") as conn:
            stored = [str(v) for row in conn.execute("SELECT * FROM admin_sessions") for v in row]
        assert stored and not any(cookie in value for value in stored)
        for value in stored:
            replay = httpx.get(f"{admin_proxy.endpoint}/admin/summary", cookies={"bucketguard_admin": value})
            assert replay.status_code == 401
        assert browser.get(f"{admin_proxy.endpoint}/admin/summary").status_code == 200  # the real cookie works


def test_brute_force_is_throttled_even_for_the_right_token(admin_proxy: RunningProxy) -> None:
    base = admin_proxy.endpoint
    # Bearer guesses and form guesses count together, per client address.
    statuses = [httpx.get(f"{base}/admin/summary", headers={"Authorization": f"Bearer guess-{i}"}).status_code
                for i in range(3)]
    statuses += [httpx.post(f"{base}/admin/login", data={"token": f"guess-{i}"}).status_code for i in range(2)]
    assert statuses == [401] * 5
    blocked = httpx.post(f"{base}/admin/login", data={"token": TOKEN})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert "set-cookie" not in blocked.headers
    also = httpx.get(f"{base}/admin/summary", headers={"Authorization": f"Bearer {TOKEN}"})
    assert also.status_code == 429

