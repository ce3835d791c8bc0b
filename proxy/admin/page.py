"""The review page under /admin/: routes, login sessions and the guards in front of every action.

Pixels are protected by default: thumbnails are made server-side as small, greyscale and heavily blurred
JPEGs (proxy/admin/thumbnails.py, bounded in memory), so nothing recognisable reaches the browser until the
reviewer clicks "reveal" on one item; that request is a POST, is written to the evidence log (who, when,
which item), and answers one unblurred thumbnail. Items caught by a hash list are reviewed from their
metadata alone (no pixels). Identical and near-identical items (same SHA-256, or PDQ within the configured
distance) are grouped, and a decision on a group applies to every item in it. Nothing is cached by browsers
(`Cache-Control: no-store`). Logins are server-side sessions in the state database (proxy/admin/sessions.py),
shared by every proxy on it: logout revokes, time expires, failed logins are throttled (per process).
Scripts may send `Authorization: Bearer <admin token>` instead.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.admin import views
from proxy.admin.exporting import build_export, stream_then_delete
from proxy.admin.federation import federation_routes
from proxy.admin.sessions import LoginThrottle, Sessions
from proxy.admin.summary import summary
from proxy.admin.thumbnails import THUMB_CONCURRENCY, THUMB_MAX_BYTES, ThumbnailError, thumbnail
from proxy.config import Config
from proxy.evidence.quarantine import QuarantineError
from proxy.integrations.lemmy import attribution_of_item
from proxy.s3.errors import S3Error
from proxy.screening.hashing import hamming

COOKIE = "bucketguard_admin"
PAGE_SIZE = 24
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"}
LIST_RULES = views.LIST_RULES
#: Form bodies the page accepts (ids of a page of groups, a report reference): far below this.
MAX_FORM_BYTES = 64 * 1024


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


def _text(body: str, status: int, **headers: str) -> Response:
    return Response(body + "\n", status_code=status, headers={**NO_STORE, **headers}, media_type="text/plain")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def admin_routes(config: Config, quarantine: Any, upstream: Any, db: Any, *,
                 sessions: Sessions | None = None, throttle: LoginThrottle | None = None) -> list[Route]:
    from proxy.screening.policy import PolicyError, load_policy

    token = config.server.admin_token
    sessions = sessions if sessions is not None else Sessions(db, token)  # shared by every proxy on `db`
    throttle = throttle or LoginThrottle()
    slots = asyncio.Semaphore(THUMB_CONCURRENCY)
    try:
        policy = load_policy(config.screening.policy or None)
    except PolicyError:
        policy = None
    rules_by_name = {rule.name: list(rule.conditions) for rule in policy.rules} if policy else {}

    def token_ok(given: str) -> bool:
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())

    def too_many(request: Request) -> Response | None:
        wait = throttle.retry_after(_client(request))
        if wait:
            return _text("too many failed logins; try again later", 429, **{"Retry-After": str(wait)})
        return None

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            session = None
            if header.startswith("Bearer "):
                if (refused := too_many(request)) is not None:
                    return refused
                if not token_ok(header[7:]):
                    throttle.failed(_client(request))
                    return _text("admin token required", 401)
            else:
                session = await sessions.get(request.cookies.get(COOKIE, ""))
                if session is None:
                    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                        return HTMLResponse(views.login_page("Log in with the admin token."), 401, headers=NO_STORE)
                    return _text("admin token required", 401)
            if request.method == "POST" and session is not None:
                if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
                    return _text("form too large", 413)
                form = await request.form()
                if not session.csrf_ok(str(form.get("csrf", "")) or request.headers.get("x-csrf-token", "")):
                    return _text("missing or wrong CSRF token", 403)
            request.state.csrf = session.csrf if session else ""
            try:
                return await handler(request)
            except QuarantineError as exc:
                status = 404 if str(exc).startswith("no quarantine item") else 409
                return _text(str(exc), status)

        return wrapper

    async def login(request: Request) -> Response:
        if (refused := too_many(request)) is not None:
            return refused
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return _text("form too large", 413)
        form = await request.form()
        if not token_ok(str(form.get("token", ""))):
            throttle.failed(_client(request))
            return HTMLResponse(views.login_page("That token is not right."), 401, headers=NO_STORE)
        session = await sessions.create()
        response = RedirectResponse("/admin/", status_code=303, headers=NO_STORE)
        response.set_cookie(COOKIE, session.id, max_age=int(sessions.ttl_s), httponly=True, samesite="strict",
                            path="/admin", secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        await sessions.revoke(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/admin/", status_code=303, headers=NO_STORE)
        response.delete_cookie(COOKIE, path="/admin")
        return response

    def item_chunks(item: dict[str, Any]) -> Any:
        """The item's bytes as a stream (quarantine store, or the upstream for a flag), or None."""
        if item["bytes_kept"] and item["status"] in ("quarantined", "confirmed"):
            return quarantine.store.open(item["id"])
        if item["action"] == "flag":
            real = config.real_bucket(item["bucket"])
            if real is None:
                return None

            async def from_upstream() -> Any:
                response = await upstream.get_object(real, item["key"])
                async for chunk in response.iter_body():
                    yield chunk

            return from_upstream()
        return None

    async def picture(item: dict[str, Any], *, reveal: bool) -> Response:
        if item["size"] > THUMB_MAX_BYTES:
            return _text(f"{item['size']} bytes: too large for a thumbnail (export the item to see it)", 415)
        chunks = item_chunks(item)
        if chunks is None:
            return _text("no bytes for this item", 404)
        try:
            data = await thumbnail(chunks, reveal=reveal, max_bytes=config.limits.max_object_bytes,
                                   spool_dir=config.limits.spool_dir or None, slots=slots)
        except ThumbnailError as exc:
            return _text(str(exc), 415)
        except S3Error as exc:
            return _text(f"the object could not be read from the bucket: {exc.code}", 404)
        return Response(data, media_type="image/jpeg", headers=NO_STORE)

    async def index(request: Request) -> Response:
        params = request.query_params
        rule, since, until = params.get("rule", ""), params.get("from", ""), params.get("to", "")
        page = int(params["page"]) if params.get("page", "").isdigit() else 1
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
        page = min(max(page, 1), pages)
        csrf = request.state.csrf
        cards = [views.item_card(g, csrf, rules_by_name.get(g[0]["rule"], []))
                 for g in groups[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]]
        top = views.summary_section(await summary(db.engine))
        return HTMLResponse(views.index_page(cards, top, rules, rule, since, until, page, pages, csrf),
                            headers=NO_STORE)

    async def summary_json(request: Request) -> Response:
        return Response(json.dumps(await summary(db.engine)), media_type="application/json", headers=NO_STORE)

    async def thumb(request: Request) -> Response:
        item = await quarantine.get(request.path_params["item_id"])
        if item["rule"].startswith(LIST_RULES):
            return _text("hash-list matches are reviewed from their metadata", 404)
        return await picture(item, reveal=False)

    async def reveal(request: Request) -> Response:
        item_id = request.path_params["item_id"]
        item = await quarantine.get(item_id)
        if item["rule"].startswith(LIST_RULES):
            return _text("hash-list matches are not revealed", 403)
        await quarantine.record_event(item_id, "reveal", actor=actor(request), detail={"via": "review page"})
        return await picture(item, reveal=True)

    async def decide(request: Request) -> Response:
        from proxy.admin.review import confirm, release

        action = request.path_params["action"]
        if action not in ("release", "confirm", "hold"):
            return _text("unknown action", 404)
        form = await request.form()
        ids = [i for i in str(form.get("ids", "")).split(",") if i]
        for item_id in ids:
            if action == "release":
                await release(quarantine, config, db, item_id, actor=actor(request))
            elif action == "confirm":
                await confirm(quarantine, item_id, actor=actor(request))
            else:
                await quarantine.hold(item_id, reason=str(form.get("reason") or "held from the review page"),
                                      actor=actor(request))
        return RedirectResponse("/admin/", status_code=303, headers=NO_STORE)

    async def reported(request: Request) -> Response:
        form = await request.form()
        await quarantine.mark_reported(request.path_params["item_id"], ref=str(form.get("ref", ""))[:200],
                                       actor=actor(request))
        return RedirectResponse("/admin/", status_code=303, headers=NO_STORE)

    async def export(request: Request) -> Response:
        item_id = request.path_params["item_id"]
        item = await quarantine.get(item_id)  # 404 for an unknown id before anything is written
        package, folder = await build_export(quarantine, item_id, actor=actor(request),
                                             temp_root=config.limits.spool_dir or None,
                                             attribution=await attribution_of_item(config, quarantine.engine, item))
        return StreamingResponse(
            stream_then_delete(package, folder), media_type="application/zip",
            headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{package.name}"',
                     "Content-Length": str(package.stat().st_size)},
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    async def item_json(request: Request) -> Response:
        item = await quarantine.get(request.path_params["item_id"])
        attribution = await attribution_of_item(config, quarantine.engine, item)  # [lemmy]: who and where
        if attribution is not None:
            item["attribution"] = attribution
        return Response(json.dumps(item, default=str), media_type="application/json", headers=NO_STORE)

    def actor(request: Request) -> str:
        return "admin" if not request.headers.get("authorization") else "admin:bearer"

    return [
        Route("/admin/login", login, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"]),
        Route("/admin/", guarded(index), methods=["GET"]),
        Route("/admin/summary", guarded(summary_json), methods=["GET"]),
        Route("/admin/items/{item_id}", guarded(item_json), methods=["GET"]),
        Route("/admin/items/{item_id}/thumb", guarded(thumb), methods=["GET"]),
        Route("/admin/items/{item_id}/reveal", guarded(reveal), methods=["POST"]),
        Route("/admin/items/{item_id}/export", guarded(export), methods=["POST"]),
        Route("/admin/items/{item_id}/reported", guarded(reported), methods=["POST"]),
        Route("/admin/decide/{action}", guarded(decide), methods=["POST"]),
        *federation_routes(guarded, db, quarantine),  # decisions on peers' word and their sources
    ]
