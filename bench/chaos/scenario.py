"""The chaos scenario: deterministic data (one seed) and the three workloads.

Both runs (fault-free baseline and chaos) execute exactly this, against a fresh database, a
reset emulator and their own Temporal namespace; only the faults differ.

- (a) `ReconcileUsage` apply over 3 past days: every (customer, meter, day) key needs a push,
  some counters are wrong or missing, some keys are over-reported in Stripe by "another
  system" (compensated; auto-approved for the bench).
- (b) A webhook outage (no endpoint receives anything) while customers subscribe, upgrade,
  cancel, fail and pay invoices and buy credits; then `ReplayWebhooks` apply.
- (c) Late usage on 5 days (today included), a second outage batch of Stripe activity, then
  `CatchUpBackfill` apply over those 5 days (a ReconcileUsage child per day, then the replay
  and resync children).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import stripe

from billing.ingest import UsageEvent, ingest
from stripe_emulator.admin import EmulatorAdmin

METERS = {"api_requests": "API requests", "storage_gb_hours": "Storage (GB-hours)"}
USAGE_SECONDS = 3600  # usage lands in the first hour of each UTC day (deterministic, past)


@dataclass
class Sizes:
    customers: int  # usage customers (a)
    webhook_customers: int  # customers of the Stripe activity (b), (c)

    @classmethod
    def named(cls, size: str) -> Sizes:
        return {"small": cls(40, 6), "medium": cls(150, 16), "large": cls(400, 30)}[size]


@dataclass
class Activity:
    """What the Stripe activity created (ids are per run; compared through customer ids)."""

    customers: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    credit_sessions: dict[str, int] = field(default_factory=dict)


def today() -> date:
    return datetime.now(UTC).date()


def _usage(rng: random.Random, cid: str, meter: str, day: date, n: int, tag: str) -> list[UsageEvent]:
    out = []
    for k in range(n):
        at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=rng.randrange(USAGE_SECONDS))
        qty = Decimal(rng.randint(1, 50)) if meter == "api_requests" else Decimal(rng.randint(1, 40)) / 4
        out.append(UsageEvent(request_id=f"{tag}-{cid}-{meter}-{day}-{k}", customer_id=cid, meter=meter,
                              quantity=qty, occurred_at=at))
    return out


async def seed_usage(pool: asyncpg.Pool, sc: stripe.StripeClient, admin: EmulatorAdmin, seed: int,
                     sizes: Sizes) -> dict[str, str]:
    """Meters, customers (Stripe + billing.customers), 3 days of usage, counters with drift,
    and over-reporting injected into Stripe. Returns customer_id -> Stripe customer id."""
    rng = random.Random(seed)
    for name, display in METERS.items():
        await sc.v1.billing.meters.create_async(params={
            "display_name": display, "event_name": name, "default_aggregation": {"formula": "sum"}})
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[str, str]:
        cid = f"cus-{i:05d}"
        async with sem:
            cus = await sc.v1.customers.create_async(params={"name": cid, "metadata": {"customer_id": cid}})
        return cid, cus.id

    customers = dict(await asyncio.gather(*(one(i) for i in range(sizes.customers))))
    d = today()
    days = [d - timedelta(days=k) for k in (3, 2, 1)]
    events: list[UsageEvent] = []
    for cid in sorted(customers):
        for meter in METERS:
            for day in days:
                events += _usage(rng, cid, meter, day, rng.randint(1, 2), "a")
    events += events[:5]  # the app retried a few submissions
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO billing.customers (customer_id, stripe_customer_id, name) VALUES ($1, $2, $1)",
            sorted(customers.items()))
        await ingest(conn, events, source="chaos")
        # Counters: correct, except ~10% off by 5 and ~5% missing (repaired by the runs).
        rows = await conn.fetch(
            """SELECT customer_id, meter, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p,
                      sum(quantity) AS v
                 FROM billing.usage_events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")
        counters = []
        for r in rows:
            roll = rng.random()
            if roll < 0.05:
                continue
            v = r["v"] + (5 if roll < 0.15 else 0)
            counters.append((r["customer_id"], r["meter"], r["p"], v))
        await conn.executemany(
            """INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
               VALUES ($1, $2, $3, ($3::date + interval '1 month')::date, $4)""", counters)
    # Over-reporting by another system on ~3% of keys (before our first push).
    extra = []
    for cid in sorted(customers):
        for meter in METERS:
            for day in days:
                if rng.random() < 0.03:
                    ts = int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp()) + 7200
                    extra.append({"event_name": meter, "customer": customers[cid], "value": rng.randint(5, 30),
                                  "timestamp": ts, "identifier": f"other-system-{cid}-{meter}-{day}"})
    if extra:
        await admin.seed_meter_events(extra)
    return customers


async def late_usage(pool: asyncpg.Pool, customers: dict[str, str], seed: int) -> int:
    """Usage that arrived late on 5 days (today included) for ~20% of the customers."""
    rng = random.Random(seed + 1)
    d = today()
    days = [d - timedelta(days=k) for k in (4, 3, 2, 1, 0)]
    events: list[UsageEvent] = []
    for cid in sorted(customers):
        if rng.random() < 0.2:
            for meter in METERS:
                for day in days:
                    if rng.random() < 0.6:
                        events += _usage(rng, cid, meter, day, 1, "c")
    async with pool.acquire() as conn:
        await ingest(conn, events, source="chaos-late")
    return len(events)


async def stripe_activity(sc: stripe.StripeClient, admin: EmulatorAdmin, act: Activity, *, first: int, count: int,
                          prices: dict[str, str]) -> None:
    """Every event type the webhook handlers care about, several times (deterministic names)."""
    for i in range(first, first + count):
        cid = f"whc-{i:04d}"
        cus = await sc.v1.customers.create_async(params={
            "name": f"Customer {i}", "email": f"{cid}@example.com", "metadata": {"customer_id": cid}})
        act.customers.append(cus.id)
        sub = await sc.v1.subscriptions.create_async(params={
            "customer": cus.id, "items": [{"price": prices["basic"], "quantity": 1}]})
        act.subscriptions.append(sub.id)
        item = sub["items"]["data"][0]
        await sc.v1.subscriptions.update_async(sub.id, params={"items": [{"id": item.id, "price": prices["pro"]}]})
        await sc.v1.subscriptions.update_async(sub.id, params={"items": [{"id": item.id, "quantity": 2 + i % 5}]})
        if i % 2 == 1:
            await sc.v1.subscriptions.update_async(sub.id, params={"cancel_at_period_end": True})
        if i % 3 == 2:
            await sc.v1.subscriptions.cancel_async(sub.id)
        else:
            inv = await sc.v1.invoices.create_async(params={"customer": cus.id, "subscription": sub.id})
            await admin.fail_invoice_payment(inv.id)
            if i % 2 == 0:
                await sc.v1.invoices.pay_async(inv.id)
        amount = 500 * (i % 7 + 1)
        cs = await sc.v1.checkout.sessions.create_async(params={
            "mode": "payment", "customer": cus.id, "success_url": "https://example.com/ok",
            "line_items": [{"price": prices["credits"], "quantity": 1}], "metadata": {"credits": str(amount)}})
        await admin.complete_checkout_session(cs.id)
        act.credit_sessions[cs.id] = amount
        await sc.v1.customers.update_async(cus.id, params={"name": f"Renamed {i}"})


async def create_prices(sc: stripe.StripeClient) -> dict[str, str]:
    product = await sc.v1.products.create_async(params={"name": "Chaos plan"})
    basic = await sc.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 1000, "recurring": {"interval": "month"}})
    pro = await sc.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 5000, "recurring": {"interval": "month"}})
    credits = await sc.v1.prices.create_async(params={"product": product.id, "currency": "usd", "unit_amount": 2500})
    return {"basic": basic.id, "pro": pro.id, "credits": credits.id}


async def second_batch(sc: stripe.StripeClient, act: Activity, n: int) -> None:
    """More changes during a second outage: a cancel and a quantity change on existing ones."""
    for k, sid in enumerate(act.subscriptions[:n]):
        sub = await sc.v1.subscriptions.retrieve_async(sid)
        if sub.status == "canceled":
            continue
        if k % 2 == 0:
            await sc.v1.subscriptions.cancel_async(sid)
        else:
            item = sub["items"]["data"][0]
            await sc.v1.subscriptions.update_async(sid, params={"items": [{"id": item.id, "quantity": 9}]})
