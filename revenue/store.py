"""SQL of RevenueReconciliation: the run's row, Stripe's listed objects (scratch), both sides of
a day's invoices, the day totals and the findings. Plain functions over an asyncpg connection."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from billing import correlation
from common.paged import PagedRunContext
from common.types import RunStatus
from revenue.rules import Side, StripeSide
from revenue.types import RUN_KIND, FindingStatus, RevenueCounts, day_bounds

REFUND_OK = "succeeded"
PAID = "paid"
# Balance transaction types of money in and out for payments (card: charge/refund; other
# payment methods: payment/payment_refund).
BALANCE_TYPES = ["charge", "payment", "refund", "payment_refund"]


def _ts(v: Any) -> datetime | None:
    return datetime.fromtimestamp(int(v), tz=UTC) if v is not None else None


def _id(v: Any) -> str | None:
    return v.get("id") if isinstance(v, dict) else v


def scratch_row(kind: str, o: dict[str, Any]) -> tuple[Any, ...]:
    """(object_id, kind, invoice_id, charge_id, payment_intent_id, status, txn_type, amount,
    amount_due, currency, at, raw) of one listed Stripe object."""
    if kind == "invoice":
        st = o.get("status_transitions") or {}
        return (o["id"], kind, o["id"], None, None, o.get("status"), None, o.get("amount_paid"),
                o.get("amount_due"), o.get("currency"), _ts(st.get("paid_at")), o)
    if kind == "invoice_payment":
        p = o.get("payment") or {}
        st = o.get("status_transitions") or {}
        return (o["id"], kind, _id(o.get("invoice")), _id(p.get("charge")), _id(p.get("payment_intent")),
                o.get("status"), None, o.get("amount_paid"), None, o.get("currency"), _ts(st.get("paid_at")), None)
    if kind == "refund":
        return (o["id"], kind, None, _id(o.get("charge")), _id(o.get("payment_intent")), o.get("status"), None,
                o.get("amount"), None, o.get("currency"), _ts(o.get("created")), None)
    return (o["id"], kind, None, _id(o.get("source")), None, o.get("status"), o.get("type"), o.get("amount"),
            None, o.get("currency"), _ts(o.get("created")), None)


async def save_objects(conn: asyncpg.Connection, run_id: str, kind: str, objects: list[dict[str, Any]],
                       listed_at: datetime) -> None:
    """Stripe's objects as listed (a retried page rewrites the same rows)."""
    await conn.executemany(
        """
        INSERT INTO billing.revenue_stripe_objects
            (run_id, object_id, kind, invoice_id, charge_id, payment_intent_id, status, txn_type, amount,
             amount_due, currency, at, raw, listed_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT (run_id, object_id) DO UPDATE SET
            invoice_id = EXCLUDED.invoice_id, charge_id = EXCLUDED.charge_id,
            payment_intent_id = EXCLUDED.payment_intent_id, status = EXCLUDED.status,
            txn_type = EXCLUDED.txn_type, amount = EXCLUDED.amount, amount_due = EXCLUDED.amount_due,
            currency = EXCLUDED.currency, at = EXCLUDED.at, raw = EXCLUDED.raw, listed_at = EXCLUDED.listed_at
        """, [(run_id, *scratch_row(kind, o), listed_at) for o in objects])


# Stripe's refunds attributed to invoices through the invoice payment of the refunded charge
# (or payment intent).
_STRIPE_REFUNDS = """
SELECT DISTINCT ON (r.object_id) p.invoice_id, r.object_id AS refund_id, r.charge_id, r.amount, r.currency, r.at
  FROM billing.revenue_stripe_objects r
  JOIN billing.revenue_stripe_objects p
    ON p.run_id = r.run_id AND p.kind = 'invoice_payment'
   AND (p.charge_id = r.charge_id OR p.payment_intent_id = r.payment_intent_id)
 WHERE r.run_id = $1 AND r.kind = 'refund' AND r.status = 'succeeded' AND r.at >= $2 AND r.at < $3
"""


async def day_candidates(conn: asyncpg.Connection, run_id: str, d: date, after: str | None,
                         limit: int) -> list[str]:
    """Invoices with something on day `d` on either side: paid, voided or marked uncollectible,
    a paid invoice payment, a refund. Keyset-paged by id."""
    start, end = day_bounds(d)
    rows = await conn.fetch(
        f"""
        WITH c AS (
            SELECT stripe_invoice_id AS id FROM billing.invoices
             WHERE (paid_at >= $2 AND paid_at < $3) OR (voided_at >= $2 AND voided_at < $3)
                OR (marked_uncollectible_at >= $2 AND marked_uncollectible_at < $3)
            UNION SELECT invoice_id FROM billing.revenue_stripe_objects
             WHERE run_id = $1 AND kind IN ('invoice', 'invoice_payment') AND at >= $2 AND at < $3
               AND status = 'paid'
            UNION SELECT object_id FROM billing.revenue_stripe_objects
             WHERE run_id = $1 AND kind = 'invoice' AND status IN ('void', 'uncollectible')
               AND coalesce((raw->'status_transitions'->>'voided_at')::bigint,
                            (raw->'status_transitions'->>'marked_uncollectible_at')::bigint)
                   BETWEEN extract(epoch FROM $2)::bigint AND extract(epoch FROM $3)::bigint - 1
            UNION SELECT invoice_id FROM ({_STRIPE_REFUNDS}) sr
            UNION SELECT stripe_invoice_id FROM billing.invoice_refunds WHERE refunded_at >= $2 AND refunded_at < $3
        )
        SELECT id FROM c WHERE id IS NOT NULL AND ($4::text IS NULL OR id > $4) ORDER BY id LIMIT $5
        """, run_id, start, end, after, limit)
    return [r["id"] for r in rows]


async def missing_stripe_invoices(conn: asyncpg.Connection, run_id: str, ids: list[str]) -> list[str]:
    rows = await conn.fetch(
        """SELECT id FROM unnest($2::text[]) id WHERE NOT EXISTS (
               SELECT 1 FROM billing.revenue_stripe_objects o WHERE o.run_id = $1 AND o.object_id = id)""",
        run_id, ids)
    return [r["id"] for r in rows]


class Sides:
    """Both sides of a batch of invoices, and the amounts of day D."""

    def __init__(self) -> None:
        self.local: dict[str, Side] = {}
        self.stripe: dict[str, StripeSide] = {}
        self.stripe_raw: dict[str, dict[str, Any]] = {}
        self.listed_at: dict[str, datetime] = {}
        self.customer: dict[str, str | None] = {}
        self.stripe_customer: dict[str, str | None] = {}
        self.local_refunded_d: dict[str, int] = {}
        self.stripe_refunded_d: dict[str, int] = {}
        self.payments_d: dict[str, int] = {}
        self.stripe_refunds: dict[str, list[asyncpg.Record]] = {}


async def read_sides(conn: asyncpg.Connection, run_id: str, ids: list[str], d: date, since: date,
                     until: date) -> Sides:
    start, end = day_bounds(d)
    range_start, range_end = day_bounds(since)[0], day_bounds(until)[1]
    s = Sides()
    local_refunds: dict[str, dict[str, int]] = {}
    for r in await conn.fetch(
            "SELECT * FROM billing.invoice_refunds WHERE stripe_invoice_id = ANY($1) AND status = $2 "
            "AND refunded_at >= $3 AND refunded_at < $4", ids, REFUND_OK, range_start, range_end):
        local_refunds.setdefault(r["stripe_invoice_id"], {})[r["stripe_refund_id"]] = r["amount"]
        if start <= r["refunded_at"] < end:
            s.local_refunded_d[r["stripe_invoice_id"]] = s.local_refunded_d.get(r["stripe_invoice_id"], 0) + r["amount"]
    for r in await conn.fetch(
            """SELECT i.*, c.customer_id FROM billing.invoices i
               LEFT JOIN billing.customers c ON c.stripe_customer_id = i.stripe_customer_id
               WHERE i.stripe_invoice_id = ANY($1)""", ids):
        iid = r["stripe_invoice_id"]
        s.local[iid] = Side(status=r["status"], amount_paid=r["amount_paid"] or 0, paid_at=r["paid_at"],
                            currency=r["currency"], refunds=local_refunds.get(iid, {}))
        s.customer[iid], s.stripe_customer[iid] = r["customer_id"], r["stripe_customer_id"]
    stripe_refunds: dict[str, dict[str, int]] = {}
    for r in await conn.fetch(f"SELECT * FROM ({_STRIPE_REFUNDS}) sr WHERE invoice_id = ANY($4)",
                              run_id, range_start, range_end, ids):
        stripe_refunds.setdefault(r["invoice_id"], {})[r["refund_id"]] = r["amount"]
        s.stripe_refunds.setdefault(r["invoice_id"], []).append(r)
        if start <= r["at"] < end:
            s.stripe_refunded_d[r["invoice_id"]] = s.stripe_refunded_d.get(r["invoice_id"], 0) + r["amount"]
    payments: dict[str, tuple[int, int]] = {}
    for r in await conn.fetch(
            """SELECT invoice_id, count(*) AS n, coalesce(sum(amount), 0) AS amount,
                      coalesce(sum(amount) FILTER (WHERE at >= $3 AND at < $4), 0) AS amount_d
                 FROM billing.revenue_stripe_objects
                WHERE run_id = $1 AND kind = 'invoice_payment' AND status = 'paid' AND invoice_id = ANY($2)
                GROUP BY invoice_id""", run_id, ids, start, end):
        payments[r["invoice_id"]] = (r["n"], r["amount"])
        s.payments_d[r["invoice_id"]] = r["amount_d"]
    for r in await conn.fetch(
            "SELECT * FROM billing.revenue_stripe_objects WHERE run_id = $1 AND kind = 'invoice' "
            "AND object_id = ANY($2) AND raw IS NOT NULL", run_id, ids):
        iid = r["object_id"]
        raw = r["raw"]
        n, amount = payments.get(iid, (0, 0))
        s.stripe[iid] = StripeSide(status=r["status"], amount_paid=r["amount"] or 0, paid_at=r["at"],
                                   currency=r["currency"], refunds=stripe_refunds.get(iid, {}),
                                   amount_due=r["amount_due"] or 0, payments_paid=n, payments_amount=amount)
        s.stripe_raw[iid], s.listed_at[iid] = raw, r["listed_at"]
        s.stripe_customer.setdefault(iid, _id(raw.get("customer")))
    unmapped = [iid for iid in s.stripe if iid not in s.local]
    if unmapped:
        for r in await conn.fetch("SELECT customer_id, stripe_customer_id FROM billing.customers "
                                  "WHERE stripe_customer_id = ANY($1)", [s.stripe_customer[i] for i in unmapped]):
            for iid in unmapped:
                if s.stripe_customer[iid] == r["stripe_customer_id"]:
                    s.customer[iid] = r["customer_id"]
    return s


async def record_facts(conn: asyncpg.Connection, run_id: str, d: date, rows: list[tuple[Any, ...]]) -> None:
    """Both sides of the day's invoices as first observed (before any fix)."""
    await conn.executemany(
        """
        INSERT INTO billing.revenue_invoices
            (run_id, day, stripe_invoice_id, currency, local_status, local_paid, local_refunded, stripe_status,
             stripe_paid, stripe_refunded, payments_paid, out_of_band)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        ON CONFLICT DO NOTHING
        """, [(run_id, d, *r) for r in rows])


async def record_finding(conn: asyncpg.Connection, run_id: str, invoice_id: str, kind: str, d: date,
                         values: dict[str, Any], status: FindingStatus, detail: str) -> bool:
    """One finding of the run, on the first day it shows up on; True when it is new."""
    return await conn.fetchval(
        """
        INSERT INTO billing.revenue_findings
            (run_id, stripe_invoice_id, kind, day, stripe_customer_id, customer_id, currency, local_status,
             stripe_status, local_amount_paid, stripe_amount_paid, local_refunded, stripe_refunded, status, detail)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
        ON CONFLICT DO NOTHING RETURNING true
        """, run_id, invoice_id, kind, d, values["stripe_customer_id"], values["customer_id"], values["currency"],
        values["local_status"], values["stripe_status"], values["local_amount_paid"], values["stripe_amount_paid"],
        values["local_refunded"], values["stripe_refunded"], status.value, detail) or False


async def set_finding_status(conn: asyncpg.Connection, run_id: str, invoice_id: str, kinds: list[str],
                             status: FindingStatus) -> None:
    await conn.execute(
        "UPDATE billing.revenue_findings SET status = $4, updated_at = now() "
        "WHERE run_id = $1 AND stripe_invoice_id = $2 AND kind = ANY($3) AND status <> $4",
        run_id, invoice_id, kinds, status.value)


async def count_day(conn: asyncpg.Connection, run_id: str, d: date, counts: RevenueCounts) -> None:
    """The day's findings as recorded (also by an attempt that died after writing them): their
    number by kind, the invoices fixed (applied), unfixable and failed."""
    rows = await conn.fetch(
        "SELECT kind, status, count(*) AS n, count(DISTINCT stripe_invoice_id) AS invoices "
        "FROM billing.revenue_findings WHERE run_id = $1 AND day = $2 GROUP BY kind, status", run_id, d)
    counts.findings = sum(r["n"] for r in rows)
    counts.by_kind = {}
    for r in rows:
        counts.by_kind[r["kind"]] = counts.by_kind.get(r["kind"], 0) + r["n"]
    counts.unfixable = sum(r["n"] for r in rows if r["status"] == FindingStatus.UNFIXABLE)
    counts.fix_failures = sum(r["n"] for r in rows if r["status"] == FindingStatus.FAILED)
    counts.fixed = await conn.fetchval(
        "SELECT count(DISTINCT stripe_invoice_id) FROM billing.revenue_findings "
        "WHERE run_id = $1 AND day = $2 AND status = $3", run_id, d, FindingStatus.APPLIED.value)


async def write_day_totals(conn: asyncpg.Connection, run_id: str, d: date) -> None:
    """The day's totals per currency, from the facts first observed and Stripe's balance."""
    start, end = day_bounds(d)
    await conn.execute(
        """
        WITH f AS (
            SELECT currency, count(*) FILTER (WHERE local_paid <> 0) AS local_count, sum(local_paid) AS local_paid,
                   sum(local_refunded) AS local_refunded, count(*) FILTER (WHERE stripe_paid <> 0) AS stripe_count,
                   sum(stripe_paid) AS stripe_paid, sum(stripe_refunded) AS stripe_refunded,
                   sum(payments_paid) AS payments_paid, sum(out_of_band) AS out_of_band
              FROM billing.revenue_invoices WHERE run_id = $1 AND day = $2 GROUP BY currency
        ), b AS (
            SELECT currency, sum(amount) AS net FROM billing.revenue_stripe_objects
             WHERE run_id = $1 AND kind = 'balance_transaction' AND txn_type = ANY($5) AND at >= $3 AND at < $4
             GROUP BY currency
        ), n AS (
            SELECT currency, count(*) AS findings FROM billing.revenue_findings
             WHERE run_id = $1 AND day = $2 GROUP BY currency
        )
        INSERT INTO billing.revenue_days
            (run_id, day, currency, local_count, local_paid, local_refunded, stripe_count, stripe_paid,
             stripe_refunded, payments_paid, out_of_band, balance_net, drift, findings)
        SELECT $1, $2, cur, coalesce(f.local_count, 0), coalesce(f.local_paid, 0), coalesce(f.local_refunded, 0),
               coalesce(f.stripe_count, 0), coalesce(f.stripe_paid, 0), coalesce(f.stripe_refunded, 0),
               coalesce(f.payments_paid, 0), coalesce(f.out_of_band, 0), coalesce(b.net, 0),
               coalesce(f.local_paid - f.local_refunded - f.stripe_paid + f.stripe_refunded, 0),
               coalesce(n.findings, 0)
          FROM (SELECT currency AS cur FROM f UNION SELECT currency FROM b UNION SELECT currency FROM n) c
          LEFT JOIN f ON f.currency = c.cur LEFT JOIN b ON b.currency = c.cur LEFT JOIN n ON n.currency = c.cur
         WHERE cur IS NOT NULL
        ON CONFLICT (run_id, day, currency) DO UPDATE SET
            local_count = EXCLUDED.local_count, local_paid = EXCLUDED.local_paid,
            local_refunded = EXCLUDED.local_refunded, stripe_count = EXCLUDED.stripe_count,
            stripe_paid = EXCLUDED.stripe_paid, stripe_refunded = EXCLUDED.stripe_refunded,
            payments_paid = EXCLUDED.payments_paid, out_of_band = EXCLUDED.out_of_band,
            balance_net = EXCLUDED.balance_net, drift = EXCLUDED.drift, findings = EXCLUDED.findings
        """, run_id, d, start, end, BALANCE_TYPES)


# ---------------------------------------------------------------------------- the run's row


async def start_run(conn: asyncpg.Connection, ctx: PagedRunContext, since: date, until: date) -> None:
    """The run's reconciliation_runs row (kind 'revenue'); a new execution under the same
    workflow id starts its report afresh (its findings and days go)."""
    async with conn.transaction():
        previous = await conn.fetchval(
            "SELECT workflow_run_id FROM billing.reconciliation_runs WHERE run_id = $1", ctx.run_id)
        if previous is not None and previous != ctx.workflow_run_id:
            await conn.execute("DELETE FROM billing.reconciliation_runs WHERE run_id = $1", ctx.run_id)
        await conn.execute(
            """
            INSERT INTO billing.reconciliation_runs
                (run_id, workflow_run_id, kind, mode, window_start, window_end, correlation_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING
            """, ctx.run_id, ctx.workflow_run_id, RUN_KIND, ctx.mode.value, since, until, correlation.current())
        await conn.execute("DELETE FROM billing.revenue_stripe_objects WHERE run_id = $1", ctx.run_id)


async def finish_run(conn: asyncpg.Connection, run_id: str, counts: RevenueCounts, observe_only: bool,
                     error: str | None) -> None:
    async with conn.transaction():
        await conn.execute(
            """
            UPDATE billing.reconciliation_runs
               SET status = $2, counts = $3::jsonb, observe_only = $4, error = $5, finished_at = now()
             WHERE run_id = $1
            """, run_id, (RunStatus.FAILED if error else RunStatus.COMPLETED).value, counts.model_dump(mode="json"),
            observe_only, error)
        await conn.execute("DELETE FROM billing.revenue_stripe_objects WHERE run_id = $1", run_id)
