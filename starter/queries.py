"""Every read the CLI makes of Postgres, in one place: plain SELECTs over one connection
(`kit.database()`), returning plain values and dicts. Nothing here writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

# ---------------------------------------------------------------------------- customers


async def customer_count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM billing.customers")


async def known_customers(conn: asyncpg.Connection, customer_ids: list[str]) -> set[str]:
    rows = await conn.fetch("SELECT customer_id FROM billing.customers WHERE customer_id = ANY($1)", customer_ids)
    return {r["customer_id"] for r in rows}


# ---------------------------------------------------------------------------- reconciliation runs

DISCREPANCY_COLUMNS = [
    "discrepancy_key", "kind", "status", "customer_id", "stripe_customer_id", "meter", "usage_day",
    "period_start", "ledger_value", "counter_value", "pushed_value", "stripe_value", "diff",
    "diff_pct", "beyond_epsilon", "action", "detail",
]


async def report(conn: asyncpg.Connection, run: str) -> dict[str, Any] | None:
    """A run's row, counts and every discrepancy (DISCREPANCY_COLUMNS); None: no such run."""
    r = await conn.fetchrow("SELECT * FROM billing.reconciliation_runs WHERE run_id = $1", run)
    if r is None:
        return None
    rows = await conn.fetch(
        f"SELECT {', '.join(DISCREPANCY_COLUMNS)} FROM billing.discrepancies WHERE run_id = $1 "
        "ORDER BY discrepancy_key", run)
    run_data = dict(r)
    return {"run": run_data, "run_id": run, "status": run_data["status"], "counts": run_data["counts"],
            "discrepancies": [dict(x) for x in rows]}


RUNS_SQL = """
SELECT r.run_id, r.kind, r.mode, r.status, r.window_start, r.window_end, r.started_at,
       r.finished_at, r.correlation_id, r.error,
       p.action = 'run.pause' AS paused, p.at AS paused_at, p.actor AS paused_by,
       p.reason AS pause_reason
  FROM billing.reconciliation_runs r
  LEFT JOIN LATERAL (
        SELECT action, at, actor, reason FROM billing.audit_log a
         WHERE a.workflow_id = r.run_id AND a.action IN ('run.pause', 'run.resume')
         ORDER BY at DESC, id DESC LIMIT 1) p ON true
 WHERE NOT $1 OR r.finished_at IS NULL
 ORDER BY r.started_at DESC
 LIMIT $2
"""


async def runs(conn: asyncpg.Connection, *, open_only: bool, limit: int) -> list[dict[str, Any]]:
    """Newest first, with whether the run's auto-healing is paused (its last pause/resume)."""
    return [dict(r) for r in await conn.fetch(RUNS_SQL, open_only, limit)]


async def run_decision(conn: asyncpg.Connection, run: str) -> asyncpg.Record | None:
    """Who approved or rejected a run's plan (both NULL while undecided); None: no such run."""
    return await conn.fetchrow(
        "SELECT status, approved_by, rejected_by FROM billing.reconciliation_runs WHERE run_id = $1", run)


async def last_successful_apply(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT run_id, workflow_run_id, mode, window_start, window_end, finished_at
           FROM billing.reconciliation_runs WHERE status = 'completed' AND mode = 'apply' AND NOT observe_only
           ORDER BY finished_at DESC NULLS LAST LIMIT 1""")


async def latest_finished_run(conn: asyncpg.Connection) -> str | None:
    return await conn.fetchval(
        "SELECT run_id FROM billing.reconciliation_runs WHERE finished_at IS NOT NULL "
        "ORDER BY finished_at DESC LIMIT 1")


async def open_discrepancies(conn: asyncpg.Connection, run: str) -> int:
    return await conn.fetchval(
        """SELECT count(*) FROM billing.discrepancies WHERE run_id = $1
           AND status IN ('observed', 'proposed', 'held', 'pending', 'failed', 'unfixable')""", run)


# ---------------------------------------------------------------------------- auto-healing, audit


async def autoheal(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT paused, since, actor, reason FROM billing.autoheal_state")


async def audit(conn: asyncpg.Connection, *, customer: str | None, since: datetime | None, action: str | None,
                limit: int) -> list[dict[str, Any]]:
    """Newest first. `customer`: rows that touched it (its own or as the entity)."""
    rows = await conn.fetch(
        """
        SELECT id, at, actor, action, entity_type, entity_id, customer_id, before, after, reason,
               workflow_id, run_id, correlation_id
        FROM billing.audit_log
        WHERE ($1::text IS NULL OR customer_id = $1 OR (entity_type = 'customer' AND entity_id = $1))
          AND ($2::timestamptz IS NULL OR at >= $2)
          AND ($3::text IS NULL OR action = $3)
        ORDER BY at DESC, id DESC LIMIT $4
        """, customer, since, action, limit)
    return [dict(r) for r in rows]


# ---------------------------------------------------------------------------- webhook inbox


async def events(conn: asyncpg.Connection, *, status: str | None, type_pattern: str | None,
                 limit: int) -> list[dict[str, Any]]:
    """Newest first. `type_pattern`: a LIKE pattern (`customer.%`)."""
    rows = await conn.fetch(
        """
        SELECT event_id, type, created, status, source, deliveries, attempts, error, received_at,
               processed_at
        FROM billing.stripe_events
        WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR type LIKE $2)
        ORDER BY created DESC, event_id DESC LIMIT $3
        """, status, type_pattern, limit)
    return [dict(r) for r in rows]


async def inbox_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Events per status."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM billing.stripe_events GROUP BY status ORDER BY status")
    return {r["status"]: r["n"] for r in rows}


async def oldest_waiting_event(conn: asyncpg.Connection) -> datetime | None:
    return await conn.fetchval("SELECT min(received_at) FROM billing.stripe_events WHERE status = 'received'")


# ---------------------------------------------------------------------------- demo


async def first_push(conn: asyncpg.Connection, customer_id: str, *, sent: bool = False) -> asyncpg.Record:
    """A customer's first meter-event push (by identifier); `sent`: among those sent to Stripe."""
    return await conn.fetchrow(
        "SELECT identifier, customer_id, meter, usage_day, value, event_timestamp FROM billing.stripe_usage_pushes "
        "WHERE customer_id = $1 AND (NOT $2 OR status IN ('sent', 'confirmed')) ORDER BY identifier LIMIT 1",
        customer_id, sent)


async def usage_total(conn: asyncpg.Connection, customer_id: str, meter: str) -> Any:
    return await conn.fetchval(
        "SELECT sum(quantity) FROM billing.usage_events WHERE customer_id = $1 AND meter = $2", customer_id, meter)


async def usage_by_key(conn: asyncpg.Connection, customer_ids: list[str], since: datetime) -> dict[tuple[str, str], Any]:
    """(customer, meter) -> the ledger's sum of usage since `since`."""
    rows = await conn.fetch(
        "SELECT customer_id, meter, sum(quantity) s FROM billing.usage_events WHERE customer_id = ANY($1) "
        "AND occurred_at >= $2 GROUP BY 1, 2", customer_ids, since)
    return {(r["customer_id"], r["meter"]): r["s"] for r in rows}


async def counters_by_key(conn: asyncpg.Connection, customer_ids: list[str]) -> dict[tuple[str, str], Any]:
    """(customer, meter) -> the enforcement counters' sum over every period."""
    rows = await conn.fetch(
        "SELECT customer_id, meter, sum(value) AS value FROM billing.usage_counters WHERE customer_id = ANY($1) "
        "GROUP BY 1, 2", customer_ids)
    return {(r["customer_id"], r["meter"]): r["value"] for r in rows}
