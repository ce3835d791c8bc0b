"""HTML of the review page: login, the summary (inline SVG chart, no external resources) and the item cards.

Pure rendering: every function takes plain data and returns escaped HTML; nothing here touches the database.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import urlencode

esc = html.escape
LIST_RULES = ("blocklist:", "builtin-test-image")
ACTION_COLOURS = {"quarantine": "#a40000", "reject": "#d9730d", "flag": "#1a73e8", "refuse": "#6b4fbb"}
MAX_BARS = 8


def login_page(message: str = "") -> str:
    note = f'<p role="alert">{esc(message)}</p>' if message else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>bucketguard review</title>
<style>{CSS}</style></head><body><main class="login"><h1>bucketguard review</h1>{note}
<form method="post" action="/admin/login"><label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button></form></main></body></html>"""


def chart(by_day: dict[str, dict[str, int]]) -> str:
    """Stacked bars of catches per day by action, as inline SVG with a text alternative."""
    days = list(by_day)
    peak = max([sum(v.values()) for v in by_day.values()] + [1])
    width, height, bar = 28 * len(days) + 40, 150, 20
    parts = [f'<line x1="30" y1="120" x2="{width}" y2="120" stroke="#888"/>',
             f'<text x="0" y="14" font-size="10">{peak}</text><text x="0" y="120" font-size="10">0</text>']
    for i, day in enumerate(days):
        x, base = 36 + i * 28, 120.0
        for action, count in sorted(by_day[day].items()):
            h = 110 * count / peak
            base -= h
            colour = ACTION_COLOURS.get(action, "#555")
            parts.append(f'<rect x="{x}" y="{base:.1f}" width="{bar}" height="{h:.1f}" fill="{colour}">'
                         f"<title>{esc(day)}: {count} {esc(action)}</title></rect>")
        if i % 2 == 0 or len(days) <= 7:
            parts.append(f'<text x="{x}" y="134" font-size="9">{esc(day[5:])}</text>')
    described = "; ".join(f"{d}: " + ", ".join(f"{c} {a}" for a, c in sorted(v.items())) for d, v in by_day.items()
                          if v) or "nothing caught in this period"
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{esc(a)}</span>'
                     for a, c in ACTION_COLOURS.items())
    return (f'<figure class="chart"><svg role="img" aria-label="Catches per day by action: {esc(described)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
            f"<figcaption>Catches per day, last {len(days)} days {legend}</figcaption></figure>")


def summary_section(s: dict[str, Any]) -> str:
    caught = s["caught_total"]
    pending = s["pending"]
    tiles = [
        ("Screened today", s["screened_today"], "distinct contents that reached the detectors"),
        ("Screened in total", s["screened_total"], "distinct contents"),
        ("Caught today", s["caught_today"], "refused or flagged uploads"),
        ("Caught in total", sum(caught.values()), ", ".join(f"{c} {a}" for a, c in sorted(caught.items())) or "-"),
        ("Deferred scans waiting", pending.get("pending", 0) + pending.get("unconfirmed", 0),
         ", ".join(f"{c} {st}" for st, c in sorted(pending.items())) or "none"),
    ]
    tile_html = "".join(f'<div class="tile"><span class="label">{esc(label)}</span><strong>{value}</strong>'
                        f"<small>{esc(note)}</small></div>" for label, value, note in tiles)
    rules = "".join(f"<li>{esc(label)}: {count}</li>" for label, count in list(s["by_rule"].items())[:6])
    run = s["backfill"]
    if run is None:
        backfill = "<p>No backfill yet: <code>bucketguard scan BUCKET</code> screens what is already stored.</p>"
    else:
        done = run["objects"] - run["waiting"]
        share = done / run["objects"] if run["objects"] else 0.0
        state = ("finished " + esc(run["finished_at"][:19]) if run["finished_at"] else
                 "listing" if not run["listing_done"] else "scanning")
        outcomes = ", ".join(f"{c} {o}" for o, c in sorted(run["outcomes"].items()))
        backfill = (f'<p>Last backfill (run {run["run"]}, {esc(run["target"])}/{esc(run["prefix"])}'
                    f'{", dry run" if run["dry_run"] else ""}): {state}, {done} of {run["objects"]} objects '
                    f'decided</p><progress max="1" value="{share:.3f}" aria-label="backfill progress">'
                    f"{share:.0%}</progress><p><small>{esc(outcomes)}</small></p>")
    return (f'<section class="summary" aria-label="summary"><div class="tiles">{tile_html}</div>'
            f'<div class="row">{chart(s["by_day"])}<div><h2>By rule (last {len(s["by_day"])} days)</h2>'
            f'<ul>{rules or "<li>nothing caught</li>"}</ul></div><div><h2>Backfill</h2>{backfill}</div></div>'
            "</section>")


def signal_bars(signals: dict[str, Any], conditions: list[Any]) -> str:
    """Each signal as a labelled bar; the thresholds of the rule that fired are marked on theirs."""
    numeric = {k: float(v) for k, v in signals.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if not numeric:
        return ""
    by_signal = {c.signal: c for c in conditions}
    ordered = [k for k in by_signal if k in numeric] + sorted(k for k in numeric if k not in by_signal)
    rows = []
    for name in ordered[:MAX_BARS]:
        value = numeric[name]
        condition = by_signal.get(name)
        top = max(1.0, abs(value), abs(condition.threshold) * 1.25 if condition else 0.0)
        fill = max(0.0, min(1.0, value / top)) * 100
        marker, label = "", f"{value:.3g}"
        if condition is not None:
            marker = f'<i class="threshold" style="left:{max(0.0, min(1.0, condition.threshold / top)) * 100:.1f}%">' \
                     "</i>"
            label += f" {condition.op} {condition.threshold:g} (fired)"
        rows.append(f'<div class="signal{" fired" if condition else ""}"><span title="{esc(name)}">{esc(name)}</span>'
                    f'<div class="bar" role="img" aria-label="{esc(name)} {esc(label)}"><b style="width:{fill:.1f}%">'
                    f"</b>{marker}</div><span>{esc(label)}</span></div>")
    return f'<div class="signals">{"".join(rows)}</div>'


def item_card(group: list[dict[str, Any]], csrf: str, conditions: list[Any]) -> str:
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
    members = "".join(f"<li>{esc(i['key'])} ({esc(i['created_at'][:19])})</li>" for i in group)
    hidden = f'<input type="hidden" name="csrf" value="{esc(csrf)}">'

    def button(action: str, label: str, danger: bool = False) -> str:
        cls = ' class="danger"' if danger else ""
        count = f" all {len(group)}" if len(group) > 1 else ""
        return (f'<form method="post" action="/admin/decide/{action}">{hidden}<input type="hidden" name="ids" '
                f'value="{esc(ids)}"><button type="submit"{cls}>{label}{count}</button></form>')

    export = (f'<form method="post" action="/admin/items/{head["id"]}/export">{hidden}<button type="submit">Export'
              "</button></form>" if head["bytes_kept"] else "")
    if head.get("report_ref"):
        reported = (f'<p class="reported">Reported {esc(str(head.get("reported_at") or "")[:19])}: '
                    f"<code>{esc(head['report_ref'])}</code></p>")
    else:
        reported = (f'<form class="report" method="post" action="/admin/items/{head["id"]}/reported">{hidden}'
                    f'<label for="ref-{head["id"]}">Report reference</label><input id="ref-{head["id"]}" name="ref" '
                    'required maxlength="200" placeholder="e.g. NCMEC report id"><button type="submit">'
                    "Mark reported</button></form>")
    record = json.dumps({k: head[k] for k in ("id", "sha256", "md5", "pdq", "size", "content_type",
                                                "policy_version")}, indent=1)
    hold = " &middot; on legal hold" if head.get("legal_hold") else ""
    return f"""<article class="card" aria-label="item {esc(head['id'][:8])}">{picture}
<div class="meta"><strong>{esc(head['action'])}</strong> by <code>{esc(head['rule'])}</code>
{esc(head['category'])} &middot; {esc(head['created_at'][:19])} &middot; {esc(head['status'])}{hold}<br>
{esc(head['bucket'])}/{esc(head['key'])}</div>{signal_bars(head['signals'], conditions)}{reported}
<details><summary>{len(group)} item(s) in this group &middot; record</summary><ul>{members}</ul>
<pre>{esc(record)}</pre></details>
<div class="actions">{button('confirm', 'Confirm')}{button('release', 'Release', True)}{button('hold', 'Legal hold')}
{export}</div></article>"""


def index_page(cards: list[str], summary_html: str, rules: list[str], rule: str, since: str, until: str,
               page: int, pages: int, csrf: str) -> str:
    options = "".join(f'<option value="{esc(r)}"{" selected" if r == rule else ""}>{esc(r)}</option>' for r in rules)
    query = {"rule": rule, "from": since, "to": until}
    nav = []
    if page > 1:
        nav.append(f'<a href="/admin/?{esc(urlencode({**query, "page": page - 1}))}">Previous</a>')
    nav.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        nav.append(f'<a href="/admin/?{esc(urlencode({**query, "page": page + 1}))}">Next</a>')
    body = "".join(cards) or "<p>Nothing to review.</p>"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>bucketguard review</title>
<meta name="referrer" content="same-origin"><style>{CSS}</style></head><body>
<header><h1>bucketguard review</h1><form method="post" action="/admin/logout"><input type="hidden" name="csrf"
value="{esc(csrf)}"><button>Log out</button></form></header>
<main>{summary_html}<form class="filters" method="get" action="/admin/"><div><label for="rule">Rule</label>
<select id="rule" name="rule"><option value="">all</option>{options}</select></div>
<div><label for="from">From</label><input id="from" name="from" type="date" value="{esc(since)}"></div>
<div><label for="to">To</label><input id="to" name="to" type="date" value="{esc(until)}"></div>
<button type="submit">Filter</button></form>
<p>Thumbnails are blurred and greyscale; revealing one is written to the evidence log.</p>
<section class="grid">{body}</section><nav class="pages" aria-label="pages">{"".join(nav)}</nav></main>
<script>const CSRF = {json.dumps(csrf)};{JS}</script></body></html>"""


CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f2;color:#1d1d1d}
header{background:#1d2b3a;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}
header h1{font-size:1.1rem;margin:0;flex:1}main{padding:1rem}h2{font-size:1rem;margin:.2rem 0}
.login{max-width:22rem;margin:4rem auto;background:#fff;padding:1.5rem;border-radius:8px}
label{display:block;font-weight:600;margin:.4rem 0 .2rem}input,select,button{font:inherit;padding:.3rem .5rem}
button{cursor:pointer;border:1px solid #555;border-radius:4px;background:#fff}
button.danger{border-color:#a40000;color:#a40000}
:focus-visible{outline:3px solid #1a73e8;outline-offset:2px}
.summary{background:#fff;border-radius:8px;padding:.8rem;margin-bottom:1rem;box-shadow:0 1px 3px #0002}
.tiles{display:flex;flex-wrap:wrap;gap:.8rem}.tile{min-width:9rem;display:flex;flex-direction:column}
.tile strong{font-size:1.6rem}.tile small,.tile .label{color:#555}
.row{display:flex;flex-wrap:wrap;gap:1.5rem;margin-top:.8rem}.chart{margin:0}
.key{margin-left:.6rem;font-size:.8rem}.key i{display:inline-block;width:.7rem;height:.7rem;margin-right:.2rem}
progress{width:16rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:1rem}
.card{background:#fff;border-radius:8px;padding:.7rem;box-shadow:0 1px 3px #0002}
.card img{width:224px;height:168px;object-fit:contain;background:#ddd;display:block;margin:auto}
.meta{font-size:.85rem;word-break:break-all}.actions{display:flex;flex-wrap:wrap;gap:.3rem;margin-top:.4rem}
.signals{margin:.4rem 0;font-size:.8rem}
.signal{display:grid;grid-template-columns:9rem 1fr 6.5rem;gap:.3rem;align-items:center}
.signal span:first-child{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{position:relative;height:.7rem;background:#e4e4e4;border-radius:3px}
.bar b{display:block;height:100%;background:#7a8a99;border-radius:3px}.fired .bar b{background:#a40000}
.threshold{position:absolute;top:-3px;bottom:-3px;width:2px;background:#111}
.report{display:flex;gap:.3rem;align-items:end;flex-wrap:wrap}.report label{width:100%}
.reported{font-size:.85rem;color:#1b5e20}
.nopixels{height:168px;display:flex;align-items:center;justify-content:center;background:#e8e8e8;text-align:center}
.filters{display:flex;gap:1rem;align-items:end;margin-bottom:1rem;flex-wrap:wrap}
details{font-size:.8rem}nav.pages{margin-top:1rem;display:flex;gap:.5rem}
"""

JS = """
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
