"""The review page's federation section: decisions taken on peers' word, and the signed statements behind them.

`GET /admin/federation` lists them newest first (HTML, or JSON with `?format=json`), paged; every row names
the peers and attestation ids it relied on, and whether it was re-checked after a distrust. The full signed
statements (JWS) come with `GET /admin/items/{id}/federation` for one quarantine item, and in the JSON.
Behind the admin token like the rest of the page; nothing here shows pixels.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from proxy.federation.store import FederationStore

PAGE_SIZE = 50
_HEADERS = {"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"}
Handler = Callable[[Request], Awaitable[Response]]


def _render(rows: list[dict[str, Any]], offset: int) -> str:
    def cell(value: Any) -> str:
        return f"<td>{html.escape(str(value))}</td>"

    body = []
    for row in rows:
        sources = "; ".join(f"{s['peer']}: {s['verdict']} ({s.get('basis', '')}) {s['id']}" for s in row["sources"])
        body.append("<tr>" + "".join(cell(v) for v in (
            row["decided_at"], row["bucket"], row["key"], row["action"], row["rule"], row["peers"].strip(","),
            sources, row["rechecked_at"] or "no")) + "</tr>")
    more = (f'<p><a href="/admin/federation?offset={offset + PAGE_SIZE}">older</a></p>'
            if len(rows) == PAGE_SIZE else "")
    return ("<!doctype html><meta charset=utf-8><title>bucketguard: peer decisions</title>"
            "<h1>Decisions taken on peers' word</h1><p><a href=\"/admin/\">back to review</a></p>"
            "<table border=1 cellpadding=4><tr><th>decided</th><th>bucket</th><th>key</th><th>action</th>"
            "<th>rule</th><th>peers</th><th>attestations relied on</th><th>re-checked</th></tr>"
            + "".join(body) + "</table>" + more)


def federation_routes(guarded: Callable[[Handler], Handler], db: Any, quarantine: Any) -> list[Route]:
    store = FederationStore(db)

    async def decisions(request: Request) -> Response:
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            offset = 0
        rows = await store.recent_reliance(PAGE_SIZE, offset)
        if request.query_params.get("format") == "json":
            return Response(json.dumps(rows), media_type="application/json", headers=_HEADERS)
        return HTMLResponse(_render(rows, offset), headers=_HEADERS)

    async def item_sources(request: Request) -> Response:
        item = await quarantine.get(request.path_params["item_id"])
        rows = (await store.reliance_for([item["sha256"]])).get(item["sha256"], [])
        rows = [r for r in rows if (r["bucket"], r["key"]) == (item["bucket"], item["key"])] or rows
        return Response(json.dumps(rows), media_type="application/json", headers=_HEADERS)

    return [Route("/admin/federation", guarded(decisions), methods=["GET"]),
            Route("/admin/items/{item_id}/federation", guarded(item_sources), methods=["GET"])]
