"""Helpers of the billing-period tests: customers on anchored subscriptions in the emulator (its
clock started in the past), the subscription and invoice mirror written by the production
writers from fresh Stripe reads, and usage in the ledger."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import asyncpg
import stripe

from billing.ingest import UsageEvent, ingest
from billing.stripe_objects import invoice_row, subscription_row
from webhooks.handlers import read_time, upsert_invoice, upsert_subscription

METER = "api_calls"


def midnight(d: date) -> int:
    return int(datetime.combine(d, time.min, tzinfo=UTC).timestamp())


@dataclass
class Billed:
    customer_id: str
    stripe_customer_id: str
    subscription_id: str
    price_id: str


async def meter_and_prices(sc: stripe.StripeClient) -> tuple[str, dict[str, str]]:
    """One sum meter; a per-unit price (2 cents) and a graduated one (1,000 at 2, then 0.5 + 100 flat)."""
    meter = await sc.v1.billing.meters.create_async(params={
        "display_name": "API calls", "event_name": METER, "default_aggregation": {"formula": "sum"}})
    product = await sc.v1.products.create_async(params={"name": "API"})
    rec = {"interval": "month", "usage_type": "metered", "meter": meter.id}
    per_unit = await sc.v1.prices.create_async(params={
        "currency": "usd", "product": product.id, "unit_amount": 2, "recurring": rec})
    graduated = await sc.v1.prices.create_async(params={
        "currency": "usd", "product": product.id, "recurring": rec, "billing_scheme": "tiered",
        "tiers_mode": "graduated", "tiers": [{"up_to": 1000, "unit_amount": 2},
                                             {"up_to": "inf", "unit_amount_decimal": "0.5", "flat_amount": 100}]})
    return meter.id, {"per_unit": per_unit.id, "graduated": graduated.id}


async def subscribe(pool: asyncpg.Pool, sc: stripe.StripeClient, name: str, price_id: str,
                    anchor: int) -> Billed:
    """A Stripe customer (and our row) on a metered subscription anchored at `anchor`."""
    cid = f"{name}-{uuid.uuid4().hex[:6]}"
    cus = await sc.v1.customers.create_async(params={"name": cid, "metadata": {"customer_id": cid}})
    await pool.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id, name) VALUES ($1, $2, $1)",
                       cid, cus.id)
    sub = await sc.v1.subscriptions.create_async(params={
        "customer": cus.id, "items": [{"price": price_id}], "billing_cycle_anchor": anchor})
    return Billed(cid, cus.id, sub.id, price_id)


async def mirror(pool: asyncpg.Pool, sc: stripe.StripeClient, b: Billed) -> None:
    """The subscription (tiers expanded, as the webhook handler reads it) and its invoices,
    written by the production mirror writers."""
    sub = (await sc.v1.subscriptions.retrieve_async(
        b.subscription_id, params={"expand": ["items.data.price.tiers"]})).to_dict(for_json=True)
    invoices = await sc.v1.invoices.list_async(params={"subscription": b.subscription_id, "limit": 100})
    async with pool.acquire() as conn, conn.transaction():
        await upsert_subscription(conn, subscription_row(sub), b.customer_id, sub)
        for inv in invoices.data:
            raw = inv.to_dict(for_json=True)
            await upsert_invoice(conn, invoice_row(raw), raw, read_at=await read_time(conn))


async def use(pool: asyncpg.Pool, b: Billed, day: date, quantity: int, hour: int = 12) -> None:
    at = datetime.combine(day, time(hour), tzinfo=UTC)
    async with pool.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"{b.customer_id}-{day}-{hour}-{quantity}", customer_id=b.customer_id,
                                       meter=METER, quantity=Decimal(quantity), occurred_at=at)], source="test")


async def report_directly(sc: stripe.StripeClient, b: Billed, value: int) -> None:
    """Usage Stripe has (now, by its clock) that did not come through us: what the invoice bills."""
    await sc.v1.billing.meter_events.create_async(params={
        "event_name": METER, "payload": {"stripe_customer_id": b.stripe_customer_id, "value": str(value)}})


async def latest_invoice(sc: stripe.StripeClient, b: Billed) -> Any:
    sub = await sc.v1.subscriptions.retrieve_async(b.subscription_id)
    return await sc.v1.invoices.retrieve_async(sub.latest_invoice)
