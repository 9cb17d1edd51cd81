"""Reads of billing periods (migration 0018): each customer's metered subscription items, the
state of the invoice of their previous period, and the closed periods (final invoices) the
window overlaps, with what they billed, what we adjusted since and the exact ledger. Read in
the batch's snapshot (reconcile/store.py read_batch) and by the apply-time re-checks, which also
ask Stripe itself whether a grace push's invoice is still a draft (`final_in_stripe`)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg

from billing.periods import DAY, FINAL_INVOICE_STATUSES, ItemPeriod, day_start
from billing.policy import MAX_QUANTITY, PlannedPush
from billing.pricing import Price, PriceError
from billing.stripe_gateway import StripeGateway
from reconcile.adjust import ClosedPeriod
from reconcile.types import RunContext

# A subscription still billing, preferred over an ended one for the same customer and meter.
LIVE_SUBSCRIPTION = ("active", "trialing", "past_due", "unpaid", "paused")
# Outbox rows that count as adjusted (a `failed` one never reached Stripe).
ADJUSTED_STATUSES = ("planned", "sent")


async def item_periods(conn: asyncpg.Connection, ctx: RunContext, customers: list[str],
                       ) -> dict[tuple[str, str], ItemPeriod]:
    """(customer, meter event name) -> the metered item billing it. A subscription canceled
    mid-period ends its period at `ended_at` (its final invoice bills up to there)."""
    by_meter_id = {m.stripe_meter_id: m.event_name for m in ctx.meters}
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (c.customer_id, i.meter_id)
               c.customer_id, i.meter_id, i.interval, i.interval_count, s.billing_cycle_anchor,
               p.start, i.current_period_end, prev.status AS prev_status, prev.finalizes_at,
               prev.stripe_invoice_id AS prev_invoice
          FROM billing.customers c
          JOIN billing.subscription_items i ON i.stripe_customer_id = c.stripe_customer_id
          JOIN billing.subscriptions s USING (stripe_subscription_id)
          CROSS JOIN LATERAL (SELECT CASE WHEN s.ended_at IS NOT NULL AND s.ended_at < i.current_period_end
                                          THEN s.ended_at ELSE i.current_period_start END AS start) p
          LEFT JOIN LATERAL (
                SELECT v.stripe_invoice_id, v.status, to_timestamp((v.raw->>'automatically_finalizes_at')::bigint) AS finalizes_at
                  FROM billing.invoices v
                 WHERE v.stripe_subscription_id = s.stripe_subscription_id AND v.period_end = p.start
                   AND v.period_start < v.period_end
                 ORDER BY v.stripe_created DESC NULLS LAST LIMIT 1) prev ON true
         WHERE c.customer_id = ANY($1) AND i.usage_type = 'metered' AND i.meter_id = ANY($2)
           AND i.current_period_start IS NOT NULL AND i.current_period_end IS NOT NULL
         ORDER BY c.customer_id, i.meter_id, (s.status = ANY($3)) DESC, i.current_period_end DESC
        """,
        customers, list(by_meter_id), list(LIVE_SUBSCRIPTION))
    return {
        (r["customer_id"], by_meter_id[r["meter_id"]]): ItemPeriod(
            meter_id=r["meter_id"], start=r["start"], end=max(r["current_period_end"], r["start"]),
            interval=r["interval"] or "month", interval_count=r["interval_count"] or 1,
            anchor_day=r["billing_cycle_anchor"].day if r["billing_cycle_anchor"] else None,
            previous_invoice_status=r["prev_status"], previous_finalizes_at=r["finalizes_at"],
            previous_invoice_id=r["prev_invoice"])
        for r in rows
    }


async def closed_periods(conn: asyncpg.Connection, ctx: RunContext, customers: list[str],
                         prices: dict[str, dict[str, Any]] | None = None, *,
                         invoice: str | None = None) -> list[ClosedPeriod]:
    """Every metered item's period on a final invoice overlapping the run's window, judged
    whole: the invoice line's quantity, our earlier adjustments, the exact ledger. `prices`:
    price objects read from Stripe (tiers expanded) for items whose mirror copy lacks them."""
    by_meter_id = {m.stripe_meter_id: m.event_name for m in ctx.meters}
    rows = await conn.fetch(
        """
        SELECT c.customer_id, c.stripe_customer_id, i.meter_id, i.stripe_subscription_item_id AS item_id,
               i.price, v.stripe_invoice_id, v.status, v.currency, v.period_start, v.period_end,
               v.amount_paid, v.amount_remaining, v.raw->'lines' AS lines,
               coalesce((v.raw->>'post_payment_credit_notes_amount')::bigint, 0) AS post_credited,
               (SELECT coalesce(sum(quantity), 0) FROM billing.invoice_adjustments a
                 WHERE a.stripe_invoice_id = v.stripe_invoice_id AND a.meter = i.meter_id
                   AND a.status = ANY($6)) AS adjusted,
               l.ledger, l.invalid
          FROM billing.customers c
          JOIN billing.subscription_items i ON i.stripe_customer_id = c.stripe_customer_id
          JOIN billing.invoices v ON v.stripe_subscription_id = i.stripe_subscription_id
          CROSS JOIN LATERAL (
                SELECT coalesce(sum(quantity) FILTER (WHERE quantity > -$7::numeric AND quantity < $7::numeric), 0)
                         AS ledger,
                       count(*) FILTER (WHERE NOT (quantity > -$7::numeric AND quantity < $7::numeric)) AS invalid
                  FROM billing.usage_events e
                 WHERE e.customer_id = c.customer_id AND e.meter = $8::jsonb->>i.meter_id
                   AND e.occurred_at >= v.period_start AND e.occurred_at < v.period_end) l
         WHERE c.customer_id = ANY($1) AND i.usage_type = 'metered' AND i.meter_id = ANY($2)
           AND v.status = ANY($3) AND v.period_start < v.period_end
           AND v.period_end > $4 AND v.period_start < $5
           AND ($9::text IS NULL OR v.stripe_invoice_id = $9)
        """,
        customers, list(by_meter_id), list(FINAL_INVOICE_STATUSES), day_start(ctx.window_start),
        day_start(ctx.window_end) + DAY,
        list(ADJUSTED_STATUSES), MAX_QUANTITY, by_meter_id, invoice)
    out: list[ClosedPeriod] = []
    for r in rows:
        billed = _billed(_json(r["lines"]), r["item_id"])
        if billed is None or r["invalid"]:
            # Not on this invoice (added later): nothing it billed to judge. Unusable ledger rows:
            # the period's truth is unknown (their days are reported as `invalid_usage`).
            continue
        price_obj = (prices or {}).get(_json(r["price"]).get("id", "")) or _json(r["price"])
        price, error = None, ""
        try:
            price = Price.from_stripe(price_obj)
        except PriceError as e:
            error = str(e)
        paid = r["status"] == "paid"
        creditable = ((r["amount_paid"] or 0) - r["post_credited"]) if paid else (r["amount_remaining"] or 0)
        out.append(ClosedPeriod(
            customer_id=r["customer_id"], stripe_customer_id=r["stripe_customer_id"],
            meter=by_meter_id[r["meter_id"]], stripe_invoice_id=r["stripe_invoice_id"],
            invoice_status=r["status"], currency=r["currency"] or "usd",
            period_start=r["period_start"], period_end=r["period_end"], billed=billed,
            adjusted=Decimal(r["adjusted"]), ledger=Decimal(r["ledger"]), price=price,
            price_error=error, creditable=max(creditable, 0)))
    return out


async def prices_missing_tiers(conn: asyncpg.Connection, customers: list[str]) -> list[str]:
    """Tiered prices of the customers' metered items that the mirror holds without their tiers
    (a subscription listing cannot expand them): read from Stripe before the batch is planned."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT i.price_id FROM billing.customers c
          JOIN billing.subscription_items i ON i.stripe_customer_id = c.stripe_customer_id
         WHERE c.customer_id = ANY($1) AND i.usage_type = 'metered'
           AND i.price->>'billing_scheme' = 'tiered' AND jsonb_typeof(i.price->'tiers') IS DISTINCT FROM 'array'
        """, customers)
    return [r["price_id"] for r in rows]


def _json(v: Any) -> Any:
    if isinstance(v, str | bytes):
        return json.loads(v)
    return v if v is not None else {}


def _billed(lines: dict[str, Any], item_id: str) -> Decimal | None:
    """The quantity the invoice billed for a subscription item (its usage line)."""
    total = None
    for line in lines.get("data") or []:
        details = (line.get("parent") or {}).get("subscription_item_details") or {}
        if details.get("subscription_item") == item_id:
            q = line.get("quantity_decimal") or line.get("quantity") or 0
            total = (total or Decimal(0)) + Decimal(str(q))
    return total


async def earliest_period_start(conn: asyncpg.Connection, meter_ids: list[str], customers: list[str],
                                ) -> tuple[date | None, bool]:
    """The default window's start under subscriptions: the earliest current period of a live
    metered item in scope, or the start of a previous period whose invoice is still a draft (in
    its grace: its drift can still be pushed); and whether every customer in scope has such an
    item (if not, the calendar month still applies to the others)."""
    row = await conn.fetchrow(
        """
        WITH scope AS (
            SELECT customer_id, stripe_customer_id FROM billing.customers
             WHERE cardinality($2::text[]) = 0 OR customer_id = ANY($2)),
        items AS (
            SELECT sc.customer_id, i.current_period_start, v.period_start AS draft_start
              FROM scope sc
              JOIN billing.subscription_items i ON i.stripe_customer_id = sc.stripe_customer_id
              JOIN billing.subscriptions s USING (stripe_subscription_id)
              LEFT JOIN billing.invoices v ON v.stripe_subscription_id = i.stripe_subscription_id
                   AND v.status = 'draft' AND v.period_end = i.current_period_start
                   AND v.period_start < v.period_end
             WHERE i.usage_type = 'metered' AND i.meter_id = ANY($1) AND s.status = ANY($3))
        SELECT (least(min(current_period_start), min(draft_start)) AT TIME ZONE 'UTC')::date AS earliest,
               (SELECT count(*) FROM scope WHERE customer_id NOT IN (SELECT customer_id FROM items)) = 0 AS covered
          FROM items
        """,
        meter_ids, customers, list(LIVE_SUBSCRIPTION))
    return row["earliest"], bool(row["covered"])


async def final_in_stripe(stripe: StripeGateway, item: ItemPeriod | None, push: PlannedPush | None) -> str:
    """A push into the previous period (its grace) is sent only while Stripe itself still holds
    that period's invoice as a draft: an invoice finalized early by hand is seen here even
    before its webhook reaches the mirror. Why not ("": still a draft, or not a grace push)."""
    if item is None or item.previous_invoice_id is None or push is None or push.event_timestamp >= item.start:
        return ""
    inv = await stripe.retrieve("invoice", item.previous_invoice_id)
    status = (inv or {}).get("status")
    return "" if status == "draft" else f"invoice {item.previous_invoice_id} is {status} in Stripe"
