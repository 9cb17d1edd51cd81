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
    # Closed billing periods (needs_invoice_adjustment): what finance invoices or credits.
    "adjust_quantity", "adjust_amount", "currency", "stripe_invoice_id",
]
# `report --export-adjustments`: the closed periods' findings, for finance.
ADJUSTMENT_COLUMNS = [
    "customer_id", "stripe_customer_id", "meter", "period_start", "stripe_invoice_id",
    "adjust_quantity", "adjust_amount", "currency", "status", "action", "detail", "discrepancy_key",
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


# `status` reports the usage reconciliation: revenue runs (kind 'revenue') share the runs table
# but keep their findings in billing.revenue_findings.
async def last_successful_apply(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT run_id, workflow_run_id, mode, window_start, window_end, finished_at
           FROM billing.reconciliation_runs WHERE status = 'completed' AND mode = 'apply' AND NOT observe_only
                AND kind = 'usage'
           ORDER BY finished_at DESC NULLS LAST LIMIT 1""")


async def latest_finished_run(conn: asyncpg.Connection) -> str | None:
    return await conn.fetchval(
        "SELECT run_id FROM billing.reconciliation_runs WHERE finished_at IS NOT NULL AND kind = 'usage' "
        "ORDER BY finished_at DESC LIMIT 1")


async def open_discrepancies(conn: asyncpg.Connection, run: str) -> int:
    return await conn.fetchval(
        """SELECT count(*) FROM billing.discrepancies WHERE run_id = $1
           AND status IN ('observed', 'proposed', 'held', 'pending', 'failed', 'unfixable')""", run)


# ---------------------------------------------------------------------------- auto-healing, audit


async def autoheal(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT paused, since, actor, reason FROM billing.autoheal_state")


async def stripe_circuit(conn: asyncpg.Connection) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT state, since, opened_at, reason, paused_by_circuit FROM billing.stripe_circuit")


async def notifications(conn: asyncpg.Connection, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT created_at, kind, subject, status, attempts, delivered, last_error, dedupe_key, event_id,
               body->>'title' AS title
          FROM billing.notifications
         WHERE $1::text IS NULL OR status = $1
         ORDER BY created_at DESC LIMIT $2
        """, status, limit)
    return [dict(r) for r in rows]


async def notification_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM billing.notifications GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def audit(conn: asyncpg.Connection, *, customer: str | None, since: datetime | None, action: str | None,
                limit: int, workflow_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Newest first. `customer`: rows that touched it (its own or as the entity); `workflow_ids`:
    rows written by those workflows (None: any)."""
    rows = await conn.fetch(
        """
        SELECT id, at, actor, action, entity_type, entity_id, customer_id, before, after, reason,
               workflow_id, run_id, correlation_id
        FROM billing.audit_log
        WHERE ($1::text IS NULL OR customer_id = $1 OR (entity_type = 'customer' AND entity_id = $1))
          AND ($2::timestamptz IS NULL OR at >= $2)
          AND ($3::text IS NULL OR action = $3)
          AND ($5::text[] IS NULL OR workflow_id = ANY($5))
        ORDER BY at DESC, id DESC LIMIT $4
        """, customer, since, action, limit, workflow_ids)
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


# ---------------------------------------------------------------------------- duration usage (allocations)


async def allocation(conn: asyncpg.Connection, allocation_id: str) -> dict[str, Any] | None:
    """One allocation (`allocations show`): its row, timeline (status changes in time order), usage
    records, ledger debits, usage events (with their Stripe push status), its last 20 findings and
    its audit rows. None: no such allocation."""
    a = await conn.fetchrow("SELECT * FROM billing.allocations WHERE allocation_id = $1", allocation_id)
    if a is None:
        return None
    usage = await conn.fetch(
        "SELECT usage_id, start_time, end_time, last_billed_at, billed_cost_minor, accrued_cost_minor, opened_by, "
        "closed_by, close_flag FROM billing.duration_usage WHERE allocation_id = $1 ORDER BY start_time",
        allocation_id)
    ids = [u["usage_id"] for u in usage]
    debits = await conn.fetch(
        "SELECT usage_id, slice_index, slice_start, slice_end, amount_minor, source, actor, created_at "
        "FROM billing.duration_ledger WHERE kind = 'debit' AND usage_id = ANY($1) ORDER BY usage_id, slice_index",
        ids)
    events = await conn.fetch(
        """
        SELECT e.request_id, e.meter, e.quantity, e.occurred_at,
               (SELECT string_agg(DISTINCT p.status, ',') FROM billing.stripe_usage_pushes p
                 WHERE p.customer_id = e.customer_id AND p.meter = e.meter
                   AND p.usage_day = (e.occurred_at AT TIME ZONE 'UTC')::date) AS stripe_push_status
          FROM billing.usage_events e
         WHERE e.request_id LIKE ANY($1) ORDER BY e.occurred_at
        """, [f"dur:{u}:%" for u in ids])
    audit_rows = await conn.fetch(
        """
        SELECT at, actor, action, entity_id, reason, correlation_id, workflow_id FROM billing.audit_log
         WHERE (entity_type = 'duration_usage' AND entity_id = ANY($1)) OR after->>'allocation_id' = $2
         ORDER BY at, id
        """, ids, allocation_id)
    findings = await conn.fetch(
        "SELECT run_id, kind, status, detail, updated_at FROM billing.allocation_findings "
        "WHERE allocation_id = $1 ORDER BY updated_at DESC LIMIT 20", allocation_id)
    timeline = [{"event": k.removesuffix("_at"), "at": a[k]}
                for k in ("activated_at", "releasing_at", "release_failed_at", "released_at") if a[k] is not None]
    timeline.sort(key=lambda r: r["at"])
    return {"allocation": dict(a), "timeline": timeline, "usage": [dict(r) for r in usage],
            "debits": [dict(r) for r in debits], "events": [dict(r) for r in events],
            "audit": [dict(r) for r in audit_rows], "findings": [dict(r) for r in findings]}


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


async def duration_rows(conn: asyncpg.Connection, customer_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """A customer's duration usage as rows: allocations, usage records, ledger, payment sessions,
    usage events and audit rows (to tell that a dry-run wrote nothing)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, where in (
            ("allocations", "customer_id = $1"),
            ("duration_usage", "allocation_id IN (SELECT allocation_id FROM billing.allocations WHERE customer_id = $1)"),
            ("duration_ledger", "customer_id = $1"),
            ("payment_sessions", "customer_id = $1"),
            ("usage_events", "customer_id = $1"),
            ("audit_log", "customer_id = $1")):
        rows = await conn.fetch(f"SELECT * FROM billing.{table} WHERE {where}", customer_id)
        out[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return out


# ---------------------------------------------------------------------------- revenue reconciliation

REVENUE_DAY_COLUMNS = [
    "day", "currency", "local_count", "local_paid", "local_refunded", "stripe_count", "stripe_paid",
    "stripe_refunded", "payments_paid", "out_of_band", "balance_net", "drift", "findings",
]
REVENUE_FINDING_COLUMNS = [
    "day", "stripe_invoice_id", "kind", "status", "customer_id", "stripe_customer_id", "currency",
    "local_status", "stripe_status", "local_amount_paid", "stripe_amount_paid", "local_refunded",
    "stripe_refunded", "detail",
]


async def revenue_report(conn: asyncpg.Connection, run: str) -> dict[str, Any]:
    """A revenue run's day totals (per currency) and findings, in order."""
    days = await conn.fetch(
        f"SELECT {', '.join(REVENUE_DAY_COLUMNS)} FROM billing.revenue_days WHERE run_id = $1 ORDER BY day, currency",
        run)
    findings = await conn.fetch(
        f"SELECT {', '.join(REVENUE_FINDING_COLUMNS)} FROM billing.revenue_findings WHERE run_id = $1 "
        "ORDER BY day, stripe_invoice_id, kind", run)
    return {"days": [dict(r) for r in days], "findings": [dict(r) for r in findings]}
