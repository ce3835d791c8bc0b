"""The numbers at the top of the review page, read from the state database (nothing is counted twice).

- contents screened: distinct contents (SHA-256) that reached the detectors, from the verdict cache;
- catches: quarantine items by day, action and rule (every refusal or flag is one item);
- deferred scans by state; the last backfill run and its outcomes so far.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.evidence.quarantine import quarantine_items
from proxy.jobs.backfill import scan_objects, scan_runs
from proxy.jobs.pending import pending_scans
from proxy.screening.cache import verdict_cache


async def summary(engine: AsyncEngine, *, days: int = 14, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    today = now.strftime("%Y-%m-%d")
    first_day = (now - timedelta(days=days - 1)).strftime("%Y-%m-%d")
    day = func.substr(quarantine_items.c.created_at, 1, 10)
    async with engine.connect() as conn:
        screened_total = (await conn.execute(select(func.count()).select_from(verdict_cache))).scalar_one()
        screened_today = (await conn.execute(select(func.count()).select_from(verdict_cache).where(
            verdict_cache.c.updated_at >= today))).scalar_one()
        caught_rows = (await conn.execute(select(day, quarantine_items.c.action, quarantine_items.c.rule,
                                                 func.count()).where(day >= first_day)
                                          .group_by(day, quarantine_items.c.action, quarantine_items.c.rule))).all()
        totals = (await conn.execute(select(quarantine_items.c.action, func.count())
                                     .group_by(quarantine_items.c.action))).all()
        pending = (await conn.execute(select(pending_scans.c.state, func.count())
                                      .group_by(pending_scans.c.state))).all()
        run = (await conn.execute(select(scan_runs).order_by(scan_runs.c.id.desc()).limit(1))).mappings().first()
        outcomes = []
        if run is not None:
            outcomes = (await conn.execute(select(scan_objects.c.outcome, func.count()).where(
                scan_objects.c.run_id == run["id"]).group_by(scan_objects.c.outcome))).all()
    by_day: dict[str, dict[str, int]] = {(now - timedelta(days=days - 1 - i)).strftime("%Y-%m-%d"): {}
                                         for i in range(days)}
    by_rule: dict[str, int] = {}
    for when, action, rule, count in caught_rows:
        if when in by_day:
            by_day[when][action] = by_day[when].get(action, 0) + count
        label = f"{action} by {rule or 'policy'}"
        by_rule[label] = by_rule.get(label, 0) + count
    backfill = None
    if run is not None:
        counts = {outcome: count for outcome, count in outcomes}
        backfill = {"run": run["id"], "target": run["target"], "prefix": run["prefix"],
                    "started_at": run["started_at"], "finished_at": run["finished_at"],
                    "listing_done": bool(run["listing_done"]), "dry_run": bool(run["dry_run"]),
                    "objects": sum(counts.values()), "waiting": counts.get("pending", 0), "outcomes": counts}
    return {"today": today, "screened_total": screened_total, "screened_today": screened_today,
            "caught_today": sum(by_day.get(today, {}).values()),
            "caught_total": {action: count for action, count in totals}, "by_day": by_day,
            "by_rule": dict(sorted(by_rule.items(), key=lambda kv: -kv[1])),
            "pending": {state: count for state, count in pending}, "backfill": backfill}
