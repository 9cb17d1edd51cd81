"""The raw-script arm: the tick's incremental work as a plain asyncio script (asyncpg + the same
StripeGateway, the same shared budget), no Temporal, no key locks, no queue, no pause, no
heartbeats, no subscription periods.

1. settled pushes: the same rows the tick reads (`sent`, older than the settle window, the same
   LIMIT), one summary per (customer, meter), 8 in flight, beside steps 2-3 (as the tick);
   a push Stripe reflects is confirmed;
2. changed keys from billing.usage_daily (`changed_seq > synced_seq`), pages of 500, 8 keys in
   flight: P = our live pushes, push L - P under the outbox (row `planned` + audit in one
   transaction, send, `sent`), mark the key synced;
3. counters of the changed keys' months = the rollup's sum (one statement per page)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from billing.policy import to_stripe_value
from billing.stripe_gateway import PushOutcome, StripeGateway
from common.audit import AuditAction, AuditInput, write_audit

CONCURRENCY = 8
STRIPE_WINDOW_DAYS = 35


async def raw_tick(pool: asyncpg.Pool, stripe: StripeGateway, *, settle_seconds: int,
                   page_size: int = 500) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    now = datetime.now(UTC)
    oldest = now.date() - timedelta(days=STRIPE_WINDOW_DAYS - 1)
    sem = asyncio.Semaphore(CONCURRENCY)
    meters = {m.event_name: m.id for m in await stripe.list_meters()}
    counts["stripe_reads"] += 1

    # 1. settled pushes
    rows = await pool.fetch(
        """
        SELECT DISTINCT customer_id, meter, usage_day, stripe_customer_id FROM billing.stripe_usage_pushes
         WHERE status = 'sent' AND sent_at <= $1 AND usage_day >= $2 ORDER BY 1, 2, 3 LIMIT $3
        """, now - timedelta(seconds=settle_seconds), oldest, page_size)
    groups: dict[tuple[str, str, str], list[date]] = defaultdict(list)
    for r in rows:
        groups[(r["customer_id"], r["meter"], r["stripe_customer_id"])].append(r["usage_day"])

    async def verify(customer_id: str, meter: str, stripe_customer_id: str, days: list[date]) -> None:
        async with sem:
            summaries = await stripe.daily_summaries(meters[meter], stripe_customer_id, min(days), max(days))
            counts["stripe_reads"] += 1
            async with pool.acquire() as conn:
                for day in days:
                    counts["settled_keys"] += 1
                    ledger = await conn.fetchval(
                        "SELECT quantity FROM billing.usage_daily WHERE customer_id = $1 AND meter = $2 "
                        "AND usage_day = $3", customer_id, meter, day) or Decimal(0)
                    if summaries.get(day, Decimal(0)) == ledger:
                        await conn.execute(
                            "UPDATE billing.stripe_usage_pushes SET status = 'confirmed', settled_at = now() "
                            "WHERE customer_id = $1 AND meter = $2 AND usage_day = $3 AND status = 'sent'",
                            customer_id, meter, day)
                        counts["confirmed"] += 1
                    else:
                        counts["mismatched"] += 1

    async def verify_all() -> None:
        async with asyncio.TaskGroup() as tg:
            for (c, m, s), days in groups.items():
                tg.create_task(verify(c, m, s, days))

    async with asyncio.TaskGroup() as outer:
        outer.create_task(verify_all())  # beside the pushes (as the tick does since 2026-11-30)
        await sync_changed(pool, stripe, now, oldest, page_size, counts)
    return dict(counts)


async def sync_changed(pool: asyncpg.Pool, stripe: StripeGateway, now: datetime, oldest: date, page_size: int,
                       counts: dict[str, int]) -> None:
    # 2. changed keys, 3. counters
    sem = asyncio.Semaphore(CONCURRENCY)
    while True:
        changed = await pool.fetch(
            """
            SELECT d.customer_id, d.meter, d.usage_day, d.quantity, d.changed_seq, c.stripe_customer_id
              FROM billing.usage_daily d JOIN billing.customers c USING (customer_id)
             WHERE d.changed_seq > d.synced_seq AND d.usage_day >= $1 ORDER BY d.changed_seq LIMIT $2
            """, oldest, page_size)
        if not changed:
            break

        async def sync(r: asyncpg.Record) -> None:
            async with sem, pool.acquire() as conn:
                customer_id, meter, day = r["customer_id"], r["meter"], r["usage_day"]
                pushed = await conn.fetchval(
                    "SELECT coalesce(sum(value), 0) FROM billing.stripe_usage_pushes WHERE customer_id = $1 "
                    "AND meter = $2 AND usage_day = $3 AND status IN ('planned', 'sent', 'confirmed')",
                    customer_id, meter, day)
                delta = Decimal(r["quantity"]) - Decimal(pushed)
                if delta:
                    ident = "raw-" + hashlib.sha256(
                        f"{customer_id}|{meter}|{day}|{pushed}|{r['quantity']}".encode()).hexdigest()[:40]
                    timestamp = min(datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12),
                                    now - timedelta(minutes=1))
                    async with conn.transaction():
                        await conn.execute(
                            """
                            INSERT INTO billing.stripe_usage_pushes (identifier, customer_id, stripe_customer_id,
                                meter, usage_day, value, event_timestamp, kind, status, run_id, workflow_id)
                            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'planned', 'raw', 'raw')
                            """, ident, customer_id, r["stripe_customer_id"], meter, day, delta, timestamp,
                            "delta" if delta > 0 else "compensation")
                        await write_audit(conn, AuditInput(
                            actor="bench-raw", action=AuditAction.USAGE_PUSH_METER_EVENT, entity_type="meter_event",
                            entity_id=ident, reason="raw_tick", customer_id=customer_id,
                            after={"meter": meter, "day": day.isoformat(), "value": str(delta)},
                            idempotency_key=f"push|{ident}"))
                    outcome, _ = await stripe.push_meter_event(
                        identifier=ident, event_name=meter, stripe_customer_id=r["stripe_customer_id"],
                        value=to_stripe_value(delta), timestamp=timestamp)
                    counts["stripe_writes"] += 1
                    ok = outcome in (PushOutcome.SENT, PushOutcome.ALREADY_SENT)
                    counts["pushed" if ok else "push_failures"] += 1
                    await conn.execute(
                        "UPDATE billing.stripe_usage_pushes SET status = $2, sent_at = now() WHERE identifier = $1",
                        ident, "sent" if ok else "failed")
                await conn.execute(
                    "UPDATE billing.usage_daily SET synced_seq = greatest(synced_seq, $4) "
                    "WHERE customer_id = $1 AND meter = $2 AND usage_day = $3", customer_id, meter, day,
                    r["changed_seq"])
                counts["changed_keys"] += 1

        async with asyncio.TaskGroup() as tg:
            for r in changed:
                tg.create_task(sync(r))
        result = await pool.execute(
            """
            INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
            SELECT d.customer_id, d.meter, p.start, (p.start + interval '1 month')::date, sum(d.quantity)
              FROM (SELECT DISTINCT customer_id, meter, date_trunc('month', usage_day)::date AS start
                      FROM unnest($1::text[], $2::text[], $3::date[]) AS k(customer_id, meter, usage_day)) p
              JOIN billing.usage_daily d ON d.customer_id = p.customer_id AND d.meter = p.meter
                   AND d.usage_day >= p.start AND d.usage_day < (p.start + interval '1 month')::date
             GROUP BY 1, 2, 3
            ON CONFLICT (customer_id, meter, period_start) DO UPDATE SET value = excluded.value, updated_at = now()
             WHERE billing.usage_counters.value IS DISTINCT FROM excluded.value
            """, [r["customer_id"] for r in changed], [r["meter"] for r in changed], [r["usage_day"] for r in changed])
        counts["counters_repaired"] += int(result.split()[-1])
