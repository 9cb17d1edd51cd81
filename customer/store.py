"""The Postgres side of one customer (asyncpg, raw SQL, read-only): mirror rows, credits, the
latest usage run's open findings, inbox events and audit rows.

Usage (ledger, counters, our pushes) is read by the reconciliation's own `read_batch`, so the
numbers shown are the ones a reconciliation run compares."""

from __future__ import annotations

from typing import Any

import asyncpg

from customer.types import AuditRow, InboxEvent, LedgerEntry, OpenFinding
from reconcile.types import DiscrepancyStatus
from resync.mirror import local_compared

# What a run left to do (or could not do): everything but applied, skipped, stale and rejected.
OPEN_STATUSES = [s.value for s in (
    DiscrepancyStatus.OBSERVED, DiscrepancyStatus.PROPOSED, DiscrepancyStatus.HELD, DiscrepancyStatus.APPROVED,
    DiscrepancyStatus.PENDING, DiscrepancyStatus.FAILED, DiscrepancyStatus.UNFIXABLE)]
MAX_FINDINGS = 100


async def subscriptions(conn: asyncpg.Connection, customer_id: str | None, stripe_customer_id: str | None,
                        fields: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT * FROM billing.subscriptions
            WHERE stripe_customer_id = $1 OR customer_id = $2 ORDER BY stripe_created DESC NULLS LAST""",
        stripe_customer_id, customer_id)
    return {r["stripe_subscription_id"]: local_compared(r, fields) for r in rows}


async def latest_invoices(conn: asyncpg.Connection, stripe_customer_id: str, limit: int) -> list[str]:
    return [r["stripe_invoice_id"] for r in await conn.fetch(
        """SELECT stripe_invoice_id FROM billing.invoices WHERE stripe_customer_id = $1
            ORDER BY stripe_created DESC NULLS LAST, stripe_invoice_id DESC LIMIT $2""", stripe_customer_id, limit)]


async def invoices(conn: asyncpg.Connection, ids: list[str], fields: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM billing.invoices WHERE stripe_invoice_id = ANY($1)", ids)
    return {r["stripe_invoice_id"]: local_compared(r, fields) for r in rows}


async def credits(conn: asyncpg.Connection, customer_id: str, limit: int) -> tuple[int | None, int, list[LedgerEntry]]:
    """(balance, ledger sum, the latest ledger rows)."""
    balance = await conn.fetchval("SELECT balance FROM billing.credit_balances WHERE customer_id = $1", customer_id)
    total = await conn.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM billing.credit_ledger WHERE customer_id = $1", customer_id)
    rows = await conn.fetch(
        """SELECT id, amount, source, reason, actor, created_at FROM billing.credit_ledger
            WHERE customer_id = $1 ORDER BY id DESC LIMIT $2""", customer_id, limit)
    return balance, int(total), [LedgerEntry(**dict(r)) for r in rows]


async def grants(conn: asyncpg.Connection, sessions: list[str], source_prefix: str) -> dict[str, tuple[int, int]]:
    """Ledger rows per checkout session (by `checkout_session_id` or by the grant's source):
    (rows, amount)."""
    rows = await conn.fetch(
        """
        SELECT coalesce(checkout_session_id, substr(source, $3)) AS cs, count(*) AS n, sum(amount) AS amount
          FROM billing.credit_ledger
         WHERE checkout_session_id = ANY($1) OR source = ANY($2)
         GROUP BY 1
        """, sessions, [source_prefix + s for s in sessions], len(source_prefix) + 1)
    return {r["cs"]: (r["n"], int(r["amount"])) for r in rows}


async def open_findings(conn: asyncpg.Connection, customer_id: str) -> tuple[str | None, list[OpenFinding]]:
    """The latest usage run that covered the customer (all customers, named, or a read-back slice
    whose range holds them), and what it left open for them."""
    run_id = await conn.fetchval(
        """SELECT run_id FROM billing.reconciliation_runs
            WHERE kind = 'usage' AND (customers_filter IS NULL OR $1 = ANY(customers_filter))
              AND (customers_after IS NULL OR $1 > customers_after COLLATE "C")
              AND (customers_through IS NULL OR $1 <= customers_through COLLATE "C")
            ORDER BY started_at DESC LIMIT 1""", customer_id)
    if run_id is None:
        return None, []
    rows = await conn.fetch(
        """SELECT run_id, discrepancy_key AS key, kind, meter, usage_day, status, diff, action, detail
             FROM billing.discrepancies
            WHERE run_id = $1 AND customer_id = $2 AND status = ANY($3)
            ORDER BY discrepancy_key LIMIT $4""", run_id, customer_id, OPEN_STATUSES, MAX_FINDINGS)
    return run_id, [OpenFinding(**dict(r)) for r in rows]


async def inbox_events(conn: asyncpg.Connection, stripe_customer_id: str, limit: int) -> list[InboxEvent]:
    """The customer's webhook inbox: events about the customer or about an object of theirs."""
    rows = await conn.fetch(
        """SELECT event_id, type, created, status, attempts, source, error FROM billing.stripe_events
            WHERE object_id = $1 OR payload -> 'data' -> 'object' ->> 'customer' = $1
            ORDER BY created DESC, event_id DESC LIMIT $2""", stripe_customer_id, limit)
    return [InboxEvent(**dict(r)) for r in rows]


async def audit_rows(conn: asyncpg.Connection, customer_id: str, limit: int) -> list[AuditRow]:
    rows = await conn.fetch(
        f"SELECT {AUDIT_COLUMNS} FROM billing.audit_log WHERE customer_id = $1 ORDER BY id DESC LIMIT $2",
        customer_id, limit)
    return [AuditRow(**dict(r)) for r in rows]


async def audit_high_water(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM billing.audit_log"))


async def fixes(conn: asyncpg.Connection, after_id: int, workflow_ids: list[str]) -> list[AuditRow]:
    """The corrective writes of these workflows since `after_id` (their run.* messages left out)."""
    rows = await conn.fetch(
        f"""SELECT {AUDIT_COLUMNS} FROM billing.audit_log
             WHERE id > $1 AND workflow_id = ANY($2) AND action NOT LIKE 'run.%' ORDER BY id""",
        after_id, workflow_ids)
    return [AuditRow(**dict(r)) for r in rows]


AUDIT_COLUMNS = ("id, at, actor, action, entity_type, entity_id, reason, before, after, workflow_id, run_id, "
                 "correlation_id")
