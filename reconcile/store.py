"""SQL of the scan and of the run's findings (asyncpg, raw SQL): the batch's reads in one
snapshot (typed for `plan_batch`), recording findings, reading a stored plan back.

The outbox writes live with the corrections they make (reconcile/corrections.py), the run rows
with the run bookkeeping (reconcile/runs.py)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg

from billing.periods import day_start, periods_overlapping
from billing.policy import (
    MAX_QUANTITY,
    FindingKind,
    Push,
    PushKind,
    PushStatus,
    diff_pct,
)
from reconcile import periods_store
from reconcile.plans import Finding, plan_from_json, plan_to_json
from reconcile.scan import BatchRows, CounterRow, Customer, LedgerDay, OutboxRow
from reconcile.types import AWAITING_APPROVAL, TOUCHED, DiscrepancyStatus, RunContext

# How many request ids of a day's unusable usage rows an `invalid_usage` finding names.
LISTED_INVALID_IDS = 5


async def customers_page(
    conn: asyncpg.Connection, *, after: str | None, limit: int, only: list[str],
    verify_run: str | None, range_after: str | None = None, range_through: str | None = None,
) -> list[Customer]:
    """The next customers after the page cursor `after`; only those in (range_after,
    range_through] when given (byte order, COLLATE "C": the read-back's slices); for a verify
    pass (`verify_run`), only those whose keys the run touched."""
    rows = await conn.fetch(
        """
        SELECT c.customer_id, c.stripe_customer_id
          FROM billing.customers c
         WHERE ($1::text IS NULL OR c.customer_id > $1)
           AND (cardinality($2::text[]) = 0 OR c.customer_id = ANY($2))
           AND ($4::text IS NULL OR EXISTS (
                 SELECT 1 FROM billing.discrepancies d
                  WHERE d.run_id = $4 AND d.customer_id = c.customer_id
                    AND d.status = ANY($5::text[])))
           AND ($6::text IS NULL OR c.customer_id > $6 COLLATE "C")
           AND ($7::text IS NULL OR c.customer_id <= $7 COLLATE "C")
         ORDER BY c.customer_id
         LIMIT $3
        """,
        after, only, limit, verify_run, list(TOUCHED), range_after, range_through,
    )
    return [Customer(r["customer_id"], r["stripe_customer_id"]) for r in rows]


async def read_batch(pool: asyncpg.Pool, ctx: RunContext, customers: list[Customer],
                     prices: dict[str, dict[str, Any]] | None = None) -> BatchRows:
    """Ledger, counters, outbox and billing periods of a batch in one snapshot: an app
    committing an event and its counter increment between two reads must not look like drift.
    The ledger is read over every period the window overlaps (the subscription items' periods,
    calendar months, and the periods stored counters were written for)."""
    ids = [c.customer_id for c in customers]
    periods = periods_overlapping(ctx.window_start, ctx.window_end)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        items = await periods_store.item_periods(conn, ctx, ids)
        counter_rows = await counters(conn, ids, ctx.window_start, ctx.window_end, ctx.meter_filter)
        bounds = [periods[0][0], periods[-1][1]]
        for item in items.values():
            bounds += [item.period_of(ctx.window_start)[0], item.period_of(ctx.window_end)[1]]
        bounds += [r["period_start"] for r in counter_rows] + [r["period_end"] for r in counter_rows]
        # Counters are checked against the ledger for every meter, Stripe-metered or not.
        day_rows = await ledger_days(conn, ids, [(min(bounds), max(bounds))], ctx.meter_filter)
        push_rows = await pushes(conn, ids, ctx.window_start, ctx.window_end)
        closed = await periods_store.closed_periods(conn, ctx, ids, prices)
    return BatchRows(
        items=items, closed=closed,
        customers=customers,
        ledger_days=[LedgerDay(r["customer_id"], r["meter"], r["day"], _dec(r["total"]),
                               int(r["dupes"] or 0), int(r["invalid"]), tuple(r["invalid_ids"] or ()))
                     for r in day_rows],
        counters=[CounterRow(r["customer_id"], r["meter"], r["period_start"], r["period_end"],
                             _dec(r["value"]), r["quota"]) for r in counter_rows],
        pushes=[OutboxRow(r["customer_id"], r["meter"], r["usage_day"], _push(r)) for r in push_rows],
    )


async def ledger_days(
    conn: asyncpg.Connection, customers: list[str], periods: list[tuple[date, date]],
    meters: list[str],
) -> list[asyncpg.Record]:
    """The customers' usage per (customer, meter, UTC day) over the billing periods that the
    window overlaps (`meters` empty = every meter): one pass over their events, from which the
    activity derives the window's daily values, the period totals of the counters and the
    unmetered usage. A customer's events are scattered over the table (they arrive in time
    order), so every pass costs about one heap page per event: at 10M events / 100k customers
    one pass over a page of 500 customers read 40k pages (~0.4 s); this used to be two passes
    (three without a meter filter).

    Rows reconciliation cannot use (NaN, +-Infinity, |quantity| >= MAX_QUANTITY: stored before
    the contract's constraints) are never summed, so no sum can be poisoned or overflow; they
    are counted per day with a few request ids (`billing.policy.reconcilable_quantity`; NaN
    sorts above every number in Postgres, so it fails `< bound`)."""
    return await conn.fetch(
        """
        SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day,
               sum(quantity) FILTER (WHERE quantity > -$5::numeric AND quantity < $5::numeric) AS total,
               sum(dedupe_count) AS dupes,
               count(*) FILTER (WHERE NOT (quantity > -$5::numeric AND quantity < $5::numeric)) AS invalid,
               (array_agg(request_id ORDER BY request_id)
                  FILTER (WHERE NOT (quantity > -$5::numeric AND quantity < $5::numeric)))[1:$6::int]
                 AS invalid_ids
          FROM billing.usage_events
         WHERE customer_id = ANY($1) AND occurred_at >= $2 AND occurred_at < $3
           AND (cardinality($4::text[]) = 0 OR meter = ANY($4))
         GROUP BY 1, 2, 3
        """,
        customers, day_start(periods[0][0]), day_start(periods[-1][1]), meters, MAX_QUANTITY,
        LISTED_INVALID_IDS,
    )


async def counters(
    conn: asyncpg.Connection, customers: list[str], start: date, end_inclusive: date, meters: list[str]
) -> list[asyncpg.Record]:
    """The counters of every period overlapping the window, whatever periods they were kept for."""
    return await conn.fetch(
        """
        SELECT customer_id, meter, period_start, period_end, value, quota
          FROM billing.usage_counters
         WHERE customer_id = ANY($1) AND period_start <= $3 AND period_end > $2
           AND (cardinality($4::text[]) = 0 OR meter = ANY($4))
        """,
        customers, start, end_inclusive, meters,
    )


async def pushes(
    conn: asyncpg.Connection, customers: list[str], start: date, end_inclusive: date
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT identifier, customer_id, meter, usage_day, value, status, kind,
               planned_at, sent_at, cancelled_at
          FROM billing.stripe_usage_pushes
         WHERE customer_id = ANY($1) AND usage_day BETWEEN $2 AND $3
        """,
        customers, start, end_inclusive,
    )


async def planned_pushes(conn: asyncpg.Connection, customers: list[str]) -> list[asyncpg.Record]:
    """Pushes recorded in the outbox but not (known to be) sent: a crash between the outbox
    write and the send. They are sent before anything else is decided."""
    return await conn.fetch(
        """
        SELECT identifier, planned_at, customer_id, meter, usage_day
          FROM billing.stripe_usage_pushes
         WHERE status = $2 AND customer_id = ANY($1)
        """,
        customers, PushStatus.PLANNED,
    )


async def key_ledger(conn: asyncpg.Connection, customer_id: str, meter: str, start: date,
                     end: date) -> tuple[Decimal, int]:
    """The ledger of one customer and meter over [start, end) now (the apply-time re-check):
    the sum of the usable rows and how many rows are unusable (see `ledger_days`)."""
    row = await conn.fetchrow(
        """
        SELECT coalesce(sum(quantity) FILTER (WHERE quantity > -$5::numeric AND quantity < $5::numeric), 0) AS total,
               count(*) FILTER (WHERE NOT (quantity > -$5::numeric AND quantity < $5::numeric)) AS invalid
          FROM billing.usage_events
         WHERE customer_id = $1 AND meter = $2 AND occurred_at >= $3 AND occurred_at < $4
        """,
        customer_id, meter, day_start(start), day_start(end), MAX_QUANTITY)
    return Decimal(row["total"]), int(row["invalid"])


async def key_pushes(conn: asyncpg.Connection, customer_id: str, meter: str, day: date) -> list[Push]:
    """Our outbox rows of one key now, every status (the apply-time re-check)."""
    rows = await conn.fetch(
        """
        SELECT identifier, value, status, kind, planned_at, sent_at, cancelled_at
          FROM billing.stripe_usage_pushes
         WHERE customer_id = $1 AND meter = $2 AND usage_day = $3
        """,
        customer_id, meter, day)
    return [_push(r) for r in rows]


async def record_findings(pool: asyncpg.Pool, run_id: str, findings: list[Finding]) -> None:
    """Insert or refresh the run's discrepancies (a retried page records the same keys)."""
    if not findings:
        return
    rows = [(
        run_id, f.key, f.kind, f.customer_id, f.stripe_customer_id, f.meter, f.usage_day,
        f.period_start, f.ledger, f.counter, f.pushed, f.stripe,
        (f.ledger - (f.stripe if f.stripe is not None else (f.counter or Decimal(0))))
        if f.ledger is not None else None,
        diff_pct(f.ledger, f.stripe) if f.ledger is not None and f.stripe is not None else None,
        f.beyond_epsilon, f.action, plan_to_json(f.plan), f.status, f.detail,
        f.adjust_quantity, f.adjust_amount, f.currency, f.stripe_invoice_id,
    ) for f in findings]
    async with pool.acquire() as conn:
        await conn.executemany(
            """
            INSERT INTO billing.discrepancies
                (run_id, discrepancy_key, kind, customer_id, stripe_customer_id, meter, usage_day,
                 period_start, ledger_value, counter_value, pushed_value, stripe_value, diff,
                 diff_pct, beyond_epsilon, action, action_params, status, detail,
                 adjust_quantity, adjust_amount, currency, stripe_invoice_id)
            VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23)
            ON CONFLICT (run_id, discrepancy_key) DO UPDATE SET
                kind = EXCLUDED.kind, ledger_value = EXCLUDED.ledger_value,
                counter_value = EXCLUDED.counter_value, pushed_value = EXCLUDED.pushed_value,
                stripe_value = EXCLUDED.stripe_value, diff = EXCLUDED.diff, diff_pct = EXCLUDED.diff_pct,
                beyond_epsilon = EXCLUDED.beyond_epsilon, action = EXCLUDED.action,
                action_params = EXCLUDED.action_params, status = EXCLUDED.status,
                detail = EXCLUDED.detail, adjust_quantity = EXCLUDED.adjust_quantity,
                adjust_amount = EXCLUDED.adjust_amount, currency = EXCLUDED.currency,
                stripe_invoice_id = EXCLUDED.stripe_invoice_id, updated_at = now()
            """,
            rows,
        )


async def awaiting_approval(pool: asyncpg.Pool, run_id: str, *, after: str | None,
                            limit: int) -> tuple[list[Finding], str | None]:
    """A page of the run's stored plan (proposed and held findings), in key order, and the
    cursor of the next page (None: this was the last). A row that no longer reads back as a
    plan (edited by hand, say) is marked `failed`, never retried."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """
            SELECT * FROM billing.discrepancies
             WHERE run_id = $1 AND status = ANY($4::text[])
               AND ($2::text IS NULL OR discrepancy_key > $2)
             ORDER BY discrepancy_key LIMIT $3
            """,
            run_id, after, limit, list(AWAITING_APPROVAL))
        out: list[Finding] = []
        for r in rows:
            try:
                out.append(Finding(
                    key=r["discrepancy_key"], kind=FindingKind(r["kind"]), customer_id=r["customer_id"],
                    stripe_customer_id=r["stripe_customer_id"], meter=r["meter"], usage_day=r["usage_day"],
                    period_start=r["period_start"], ledger=r["ledger_value"], counter=r["counter_value"],
                    pushed=r["pushed_value"], stripe=r["stripe_value"], beyond_epsilon=r["beyond_epsilon"],
                    plan=plan_from_json(r["action_params"]), status=DiscrepancyStatus(r["status"]),
                    detail=r["detail"] or "", adjust_quantity=r["adjust_quantity"],
                    adjust_amount=r["adjust_amount"], currency=r["currency"],
                    stripe_invoice_id=r["stripe_invoice_id"]))
            except ValueError as e:  # a pydantic ValidationError, an unknown kind or status
                await conn.execute(
                    "UPDATE billing.discrepancies SET status = $3, detail = $4, updated_at = now() "
                    "WHERE run_id = $1 AND discrepancy_key = $2", run_id, r["discrepancy_key"],
                    DiscrepancyStatus.FAILED, f"the stored plan does not read back: {e}"[:500])
    return out, rows[-1]["discrepancy_key"] if len(rows) == limit else None


async def set_finding_status(pool: asyncpg.Pool, run_id: str, key: str, status: DiscrepancyStatus,
                             detail: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE billing.discrepancies SET status = $3, detail = $4, updated_at = now() "
            "WHERE run_id = $1 AND discrepancy_key = $2", run_id, key, status, detail)


def _dec(v: Any) -> Decimal:
    return Decimal(v) if v is not None else Decimal(0)


def _push(r: asyncpg.Record) -> Push:
    return Push(r["identifier"], _dec(r["value"]), PushStatus(r["status"]), PushKind(r["kind"]),
                r["planned_at"], r["sent_at"], r["cancelled_at"])

