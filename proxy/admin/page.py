"""The review page under /admin/, behind the admin token.

Pixels are protected by default: thumbnails are made server-side as small, greyscale and heavily blurred
JPEGs, so nothing recognisable reaches the browser until the reviewer clicks "reveal" on one item; that
request is a POST, is written to the evidence log (who, when, which item), and answers one unblurred
thumbnail. Items caught by a hash list are reviewed from their metadata alone (no pixels). Identical and
near-identical items (same SHA-256, or PDQ within the configured distance) are grouped, and a decision on a
group applies to every item in it. Nothing is cached by browsers (`Cache-Control: no-store`).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import io
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from PIL import Image, ImageFilter, ImageOps
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from proxy.config import Config
from proxy.screening.hashing import hamming

COOKIE = "bucketguard_admin"
PAGE_SIZE = 24
THUMB_SIDE = 224
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"}
LIST_RULES = ("blocklist:", "builtin-test-image")


def _derive(token: str, label: str) -> str:
    return hmac.new(token.encode(), label.encode(), hashlib.sha256).hexdigest()


def group_items(items: list[dict[str, Any]], max_distance: int) -> list[list[dict[str, Any]]]:
    """Items with the same SHA-256, or PDQ hashes within `max_distance`, in one group (greedy, in order)."""
    groups: list[list[dict[str, Any]]] = []
    for item in items:
        for group in groups:
            head = group[0]
            if item["sha256"] == head["sha256"] or (
                    item.get("pdq") and head.get("pdq") and hamming(item["pdq"], head["pdq"]) <= max_distance):
                group.append(item)
                break
        else:
            groups.append([item])
    return groups


def _thumbnail(data: bytes, *, reveal: bool) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if not reveal:
        image = ImageOps.grayscale(image).filter(ImageFilter.GaussianBlur(14)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def admin_routes(config: Config, quarantine: Any, upstream: Any, db: Any) -> list[Route]:
    token = config.server.admin_token
    session = _derive(token, "session") if token else ""
    csrf = _derive(token, "csrf") if token else ""
    actor = "admin"

    def authorised(request: Request) -> bool:
        if not token:
            return False
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), session.encode())

    def login_page(status: int, message: str = "") -> HTMLResponse:
        note = f'<p role="alert">{html.escape(message)}</p>' if message else ""
        body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>bucketguard review</title>
<style>{_CSS}</style></head><body><main class="login"><h1>bucketguard review</h1>{note}
<form method="post" action="/admin/login"><label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button></form></main></body></html>"""
        return HTMLResponse(body, status_code=status, headers=NO_STORE)

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            if not authorised(request):
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return login_page(401, "Log in with the admin token.")
                return Response("admin token required\n", status_code=401, headers=NO_STORE)
            if request.method == "POST":
                form = await request.form()
                given = str(form.get("csrf", "")) or request.headers.get("x-csrf-token", "")
                if not hmac.compare_digest(given.encode(), csrf.encode()):
                    return Response("missing or wrong CSRF token\n", status_code=403, headers=NO_STORE)
            return await handler(request)

        return wrapper

    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token", ""))
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return login_page(401, "That token is not right.")
        response = RedirectResponse("/admin/", status_code=303, headers=NO_STORE)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/admin",
                            secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/admin/", status_code=303)
        response.delete_cookie(COOKIE, path="/admin")
        return response

    async def item_bytes(item: dict[str, Any]) -> bytes | None:
        if item["bytes_kept"] and item["status"] in ("quarantined", "confirmed"):
            return b"".join([chunk async for chunk in quarantine.store.open(item["id"])])
        if item["action"] == "flag":
            real = config.real_bucket(item["bucket"])
            if real is None:
                return None
            response = await upstream.get_object(real, item["key"])
            return b"".join([chunk async for chunk in response.iter_body()])
        return None

    async def index(request: Request) -> Response:
        params = request.query_params
        rule, since, until = params.get("rule", ""), params.get("from", ""), params.get("to", "")
        page = max(1, int(params.get("page", "1") or 1)) if params.get("page", "1").isdigit() else 1
        items = [i for i in await quarantine.list() if i["status"] in ("quarantined", "flagged", "confirmed")]
        rules = sorted({i["rule"] for i in items})
        if rule:
            items = [i for i in items if i["rule"] == rule]
        if since:
            items = [i for i in items if i["created_at"][:10] >= since]
        if until:
            items = [i for i in items if i["created_at"][:10] <= until]
        groups = group_items(sorted(items, key=lambda i: i["created_at"], reverse=True),
                             config.screening.pdq_max_distance)
        pages = max(1, (len(groups) + PAGE_SIZE - 1) // PAGE_SIZE)
        page = min(page, pages)
        shown = groups[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        return HTMLResponse(_render_index(shown, rules, rule, since, until, page, pages, csrf), headers=NO_STORE)

    async def thumb(request: Request) -> Response:
        item = await quarantine.get(request.path_params["item_id"])
        if item["rule"].startswith(LIST_RULES):
            return Response("hash-list matches are reviewed from their metadata\n", status_code=404, headers=NO_STORE)
        data = await item_bytes(item)
        if data is None:
            return Response("no bytes for this item\n", status_code=404, headers=NO_STORE)
        try:
            return Response(_thumbnail(data, reveal=False), media_type="image/jpeg", headers=NO_STORE)
        except (OSError, ValueError):
            return Response("not an image\n", status_code=415, headers=NO_STORE)

    async def reveal(request: Request) -> Response:
        item_id = request.path_params["item_id"]
        item = await quarantine.get(item_id)
        if item["rule"].startswith(LIST_RULES):
            return Response("hash-list matches are not revealed\n", status_code=403, headers=NO_STORE)
        await quarantine.record_event(item_id, "reveal", actor=actor, detail={"via": "review page"})
        data = await item_bytes(item)
        if data is None:
            return Response("no bytes for this item\n", status_code=404, headers=NO_STORE)
        return Response(_thumbnail(data, reveal=True), media_type="image/jpeg", headers=NO_STORE)

    async def decide(request: Request) -> Response:
        from proxy.admin.review import confirm, release

        form = await request.form()
        ids = [i for i in str(form.get("ids", "")).split(",") if i]
        action = request.path_params["action"]
        for item_id in ids:
            if action == "release":
                await release(quarantine, config, db, item_id, actor=actor)
            elif action == "confirm":
                await confirm(quarantine, item_id, actor=actor)
            elif action == "hold":
                await quarantine.hold(item_id, reason=str(form.get("reason") or "held from the review page"),
                                      actor=actor)
            else:
                return Response("unknown action\n", status_code=404)
        return RedirectResponse(request.headers.get("referer") or "/admin/", status_code=303, headers=NO_STORE)

    async def export(request: Request) -> Response:
        from proxy.evidence.export import export_item

        item_id = request.path_params["item_id"]
        out = Path(tempfile.mkdtemp(prefix="bucketguard-export-")) / f"bucketguard-{item_id}.zip"
        await export_item(quarantine, item_id, out, actor=actor)
        return FileResponse(out, media_type="application/zip", filename=out.name, headers=NO_STORE)

    async def item_json(request: Request) -> Response:
        item = await quarantine.get(request.path_params["item_id"])
        return Response(json.dumps(item, default=str), media_type="application/json", headers=NO_STORE)

    return [
        Route("/admin/login", login, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"]),
        Route("/admin/", guarded(index), methods=["GET"]),
        Route("/admin/items/{item_id}", guarded(item_json), methods=["GET"]),
        Route("/admin/items/{item_id}/thumb", guarded(thumb), methods=["GET"]),
        Route("/admin/items/{item_id}/reveal", guarded(reveal), methods=["POST"]),
        Route("/admin/items/{item_id}/export", guarded(export), methods=["POST"]),
        Route("/admin/decide/{action}", guarded(decide), methods=["POST"]),
    ]


_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f2;color:#1d1d1d}
header{background:#1d2b3a;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}
header h1{font-size:1.1rem;margin:0;flex:1}main{padding:1rem}
.login{max-width:22rem;margin:4rem auto;background:#fff;padding:1.5rem;border-radius:8px}
label{display:block;font-weight:600;margin:.4rem 0 .2rem}input,select,button{font:inherit;padding:.3rem .5rem}
button{cursor:pointer;border:1px solid #555;border-radius:4px;background:#fff}
button.danger{border-color:#a40000;color:#a40000}
:focus-visible{outline:3px solid #1a73e8;outline-offset:2px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:1rem}
.card{background:#fff;border-radius:8px;padding:.7rem;box-shadow:0 1px 3px #0002}
.card img{width:224px;height:168px;object-fit:contain;background:#ddd;display:block;margin:auto}
.meta{font-size:.85rem;word-break:break-all}.actions{display:flex;flex-wrap:wrap;gap:.3rem;margin-top:.4rem}
.nopixels{height:168px;display:flex;align-items:center;justify-content:center;background:#e8e8e8;text-align:center}
.filters{display:flex;gap:1rem;align-items:end;margin-bottom:1rem;flex-wrap:wrap}
details{font-size:.8rem}nav.pages{margin-top:1rem;display:flex;gap:.5rem}
"""

_JS = """
let revealed = null;
async function reveal(button) {
  const card = button.closest('.card');
  const img = card.querySelector('img');
  if (revealed && revealed !== img) { revealed.src = revealed.dataset.blurred; }
  const response = await fetch(button.dataset.url, {method: 'POST', headers: {'X-CSRF-Token': CSRF},
                                                    credentials: 'same-origin'});
  if (!response.ok) { alert('Could not reveal: ' + response.status); return; }
  img.src = URL.createObjectURL(await response.blob());
  img.alt = 'Revealed thumbnail (recorded in the evidence log)';
  revealed = img;
}
"""


def _render_index(groups: list[list[dict[str, Any]]], rules: list[str], rule: str, since: str, until: str,
                  page: int, pages: int, csrf: str) -> str:
    esc = html.escape
    cards = []
    for group in groups:
        head = group[0]
        ids = ",".join(i["id"] for i in group)
        list_match = head["rule"].startswith(LIST_RULES)
        if list_match or (not head["bytes_kept"] and head["action"] != "flag"):
            picture = (f'<div class="nopixels">Hash-list match ({esc(head["rule"])})<br>reviewed from metadata'
                       "</div>" if list_match else '<div class="nopixels">no bytes kept</div>')
        else:
            url = f"/admin/items/{head['id']}/thumb"
            picture = (f'<img src="{url}" data-blurred="{url}" alt="Blurred greyscale thumbnail of item '
                       f'{esc(head["id"][:8])}">'
                       f'<button type="button" onclick="reveal(this)" data-url="/admin/items/{head["id"]}/reveal">'
                       "Reveal (recorded)</button>")
        signals = ", ".join(f"{k}={v:.3g}" for k, v in sorted(head["signals"].items()) if isinstance(v, int | float))
        members = "".join(f"<li>{esc(i['key'])} ({esc(i['created_at'][:19])})</li>" for i in group)

        def button(action: str, label: str, danger: bool = False, ids: str = ids, count: int = len(group)) -> str:
            cls = ' class="danger"' if danger else ""
            return (f'<form method="post" action="/admin/decide/{action}"><input type="hidden" name="csrf" '
                    f'value="{csrf}"><input type="hidden" name="ids" value="{ids}"><button type="submit"{cls}>'
                    f"{label}{' all ' + str(count) if count > 1 else ''}</button></form>")

        export = (f'<form method="post" action="/admin/items/{head["id"]}/export"><input type="hidden" name="csrf" '
                  f'value="{csrf}"><button type="submit">Export</button></form>' if head["bytes_kept"] else "")
        cards.append(f"""<article class="card" aria-label="item {esc(head['id'][:8])}">{picture}
<div class="meta"><strong>{esc(head['action'])}</strong> by <code>{esc(head['rule'])}</code>
{esc(head['category'])} &middot; {esc(head['created_at'][:19])} &middot; {esc(head['status'])}
{' &middot; on legal hold' if head.get('legal_hold') else ''}<br>{esc(head['bucket'])}/{esc(head['key'])}<br>
<small>{esc(signals)}</small></div>
<details><summary>{len(group)} item(s) in this group &middot; record</summary><ul>{members}</ul>
<pre>{esc(json.dumps({k: head[k] for k in ('id', 'sha256', 'md5', 'pdq', 'size', 'content_type',
                                       'policy_version')}, indent=1))}</pre></details>
<div class="actions">{button('confirm', 'Confirm')}{button('release', 'Release', True)}{button('hold', 'Legal hold')}
{export}</div></article>""")
    options = "".join(f'<option value="{esc(r)}"{" selected" if r == rule else ""}>{esc(r)}</option>' for r in rules)
    query = {"rule": rule, "from": since, "to": until}
    nav = []
    if page > 1:
        nav.append(f'<a href="/admin/?{urlencode({**query, "page": page - 1})}">Previous</a>')
    nav.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        nav.append(f'<a href="/admin/?{urlencode({**query, "page": page + 1})}">Next</a>')
    body = "".join(cards) or "<p>Nothing to review.</p>"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>bucketguard review</title>
<meta name="referrer" content="same-origin"><style>{_CSS}</style></head><body>
<header><h1>bucketguard review</h1><form method="post" action="/admin/logout"><button>Log out</button></form></header>
<main><form class="filters" method="get" action="/admin/"><div><label for="rule">Rule</label>
<select id="rule" name="rule"><option value="">all</option>{options}</select></div>
<div><label for="from">From</label><input id="from" name="from" type="date" value="{esc(since)}"></div>
<div><label for="to">To</label><input id="to" name="to" type="date" value="{esc(until)}"></div>
<button type="submit">Filter</button></form>
<p>Thumbnails are blurred and greyscale; revealing one is written to the evidence log.</p>
<section class="grid">{body}</section><nav class="pages" aria-label="pages">{"".join(nav)}</nav></main>
<script>const CSRF = {json.dumps(csrf)};{_JS}</script></body></html>"""
