"""The console's reads of Postgres beyond `starter.queries` (which it reuses): filtered and paged
lists that a page shows 50 or 100 rows of at a time. Plain SELECTs, indexed (0019_console_indexes
and earlier), keyset-paged so that a page costs the same with 10k runs or 1M audit rows.
Nothing here writes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from common.types import Mode, RunStatus
from starter.queries import DISCREPANCY_COLUMNS

PAGE_ROWS = 50
AUDIT_ROWS = 100
# Discrepancy statuses a run has not settled yet (`starter.queries.open_discrepancies`).
OPEN_STATUSES = ["observed", "proposed", "held", "pending", "failed", "unfixable"]


async def runs(conn: asyncpg.Connection, *, kind: str | None, mode: str | None, status: str | None,
               open_only: bool, offset: int = 0, limit: int = PAGE_ROWS) -> list[dict[str, Any]]:
    """Newest first, a page at `offset` (a keyset would put run ids, which can name a customer, in URLs)."""
    rows = await conn.fetch(
        """
        SELECT run_id, workflow_run_id, kind, mode, status, window_start, window_end, started_at, finished_at,
               correlation_id, observe_only, approved_by, rejected_by, error
          FROM billing.reconciliation_runs
         WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR mode = $2)
           AND ($3::text IS NULL OR status = $3) AND (NOT $4 OR finished_at IS NULL)
         ORDER BY started_at DESC, run_id DESC
         LIMIT $5 OFFSET $6
        """, kind, mode, status, open_only, limit, offset)
    return [dict(r) for r in rows]


# The filter's choices (the kinds runs are recorded under: usage reconciliation and revenue).
RUN_KINDS = ["usage", "revenue"]
RUN_MODES = [m.value for m in Mode]
RUN_STATUSES = [s.value for s in RunStatus]


def run_ref(run: dict[str, Any]) -> str:
    """How a page's URL names a run: its first execution's Temporal run id (an opaque UUID, kept
    across continue-as-new), because a workflow id can name a customer (`customer-repair-<id>-...`)."""
    return run.get("workflow_run_id") or run["run_id"]


async def run_row(conn: asyncpg.Connection, ref: str) -> dict[str, Any] | None:
    """A run by `run_ref` (or by its run id, for runs recorded without a Temporal run id)."""
    try:
        uuid.UUID(ref)
        r = await conn.fetchrow("SELECT * FROM billing.reconciliation_runs WHERE workflow_run_id = $1 "
                                "ORDER BY started_at DESC LIMIT 1", ref)
    except ValueError:
        r = None
    if r is None:
        r = await conn.fetchrow("SELECT * FROM billing.reconciliation_runs WHERE run_id = $1", ref)
    return dict(r) if r else None


async def discrepancy_breakdown(conn: asyncpg.Connection, run_id: str) -> list[dict[str, Any]]:
    """Keys per (kind, status) of one run."""
    rows = await conn.fetch(
        "SELECT kind, status, count(*) AS n FROM billing.discrepancies WHERE run_id = $1 "
        "GROUP BY kind, status ORDER BY kind, status", run_id)
    return [dict(r) for r in rows]


async def discrepancies(conn: asyncpg.Connection, run_id: str, *, kind: str | None, status: str | None,
                        after: str | None, limit: int | None, offset: int = 0) -> list[dict[str, Any]]:
    """One run's discrepancies in key order (DISCREPANCY_COLUMNS); `after`: the last key read
    (the CSV export's batches); `offset`: the page's first row (a key names a customer: never in a URL)."""
    rows = await conn.fetch(
        f"""
        SELECT {', '.join(DISCREPANCY_COLUMNS)} FROM billing.discrepancies
         WHERE run_id = $1 AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR status = $3)
           AND ($4::text IS NULL OR discrepancy_key > $4)
         ORDER BY discrepancy_key LIMIT $5 OFFSET $6
        """, run_id, kind, status, after, limit, offset)
    return [dict(r) for r in rows]


async def open_findings_by_kind(conn: asyncpg.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT kind, count(*) AS n FROM billing.discrepancies WHERE run_id = $1 AND status = ANY($2) "
        "GROUP BY kind ORDER BY n DESC, kind", run_id, OPEN_STATUSES)
    return [dict(r) for r in rows]


async def audit(conn: asyncpg.Connection, *, customer: str | None, actor: str | None, action: str | None,
                since: datetime | None, until: datetime | None, before: tuple[datetime, int] | None,
                limit: int = AUDIT_ROWS) -> list[dict[str, Any]]:
    """Newest first. `customer`: rows that touched it (its own or as the entity), as
    `billing-recon audit --customer`; `until` exclusive; `before`: (at, id) of the last row shown.
    Only the given filters enter the SQL (values always as parameters): an `$n IS NULL OR ...`
    term would keep the planner from the (actor, at) and (action, at) indexes, and a rare actor
    would cost a walk through the whole log."""
    terms: list[str] = []
    args: list[Any] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if customer is not None:
        p = param(customer)
        terms.append(f"(customer_id = {p} OR (entity_type = 'customer' AND entity_id = {p}))")
    if actor is not None:
        terms.append(f"actor = {param(actor)}")
    if action is not None:
        terms.append(f"action = {param(action)}")
    if since is not None:
        terms.append(f"at >= {param(since)}")
    if until is not None:
        terms.append(f"at < {param(until)}")
    if before is not None:
        terms.append(f"(at, id) < ({param(before[0])}, {param(before[1])})")
    where = f"WHERE {' AND '.join(terms)}" if terms else ""
    rows = await conn.fetch(
        f"""
        SELECT id, at, actor, action, entity_type, entity_id, customer_id, before, after, reason,
               workflow_id, run_id, correlation_id
          FROM billing.audit_log {where}
         ORDER BY at DESC, id DESC LIMIT {param(limit)}
        """, *args)
    return [dict(r) for r in rows]


async def revenue_runs(conn: asyncpg.Connection, *, limit: int = PAGE_ROWS) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT r.run_id, r.workflow_run_id, r.mode, r.status, r.window_start, r.window_end, r.started_at, r.finished_at,
               (SELECT count(*) FROM billing.revenue_findings f WHERE f.run_id = r.run_id) AS findings
          FROM billing.reconciliation_runs r
         WHERE r.kind = 'revenue'
         ORDER BY r.started_at DESC, r.run_id DESC LIMIT $1
        """, limit)
    return [dict(r) for r in rows]
