"""The tick benchmark's data: 100k customers x 3 meters, N usage events over 30 days loaded by
INSERT ... SELECT generate_series in batches (the rollup triggers of migration 0021 keep
billing.usage_daily as they go), every key synced and pushed, then the two sets a tick meets:

  A (customers 1..1%):      the previous tick's work: one new event per meter today, pushed by
                            that tick (`sent`, older than the settle window): settled keys to verify
  B (the next 1%):          this tick's work: one new event per meter today: changed keys
  C (the next 1%):          idle customers, read only by the full-read arm's sample

`establish` gives every arm the same starting state (Postgres and the emulator)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import stripe

from stripe_emulator.admin import EmulatorAdmin

METERS = ("api_requests", "storage_gb_hours", "gpu_seconds")
DAYS = 30
BATCH = 1_000_000
NEW_QUANTITY = 3
PREVIOUS_TICK_AGE = timedelta(hours=2)  # the previous tick's pushes: older than the settle window
SEED_CHUNK = 20_000


def cid(i: int) -> str:
    return f"c{i}"


@dataclass
class Sets:
    customers: int
    active: int  # 1% of the customers

    def ids(self, which: str) -> list[str]:
        first = {"A": 1, "B": 1 + self.active, "C": 1 + 2 * self.active}[which]
        return [cid(i) for i in range(first, first + self.active)]


async def create_customers(conn: asyncpg.Connection, customers: int) -> None:
    await conn.execute(
        "INSERT INTO billing.customers (customer_id, stripe_customer_id) "
        "SELECT 'c' || i, 'cus_bench' || i FROM generate_series(1, $1) AS i", customers)


async def load_events(conn: asyncpg.Connection, first: int, last: int, customers: int, say: Any) -> float:
    """Events number first..last-1 (deterministic spread over customers, meters and 30 days), by
    INSERT ... SELECT generate_series, BATCH at a time (the rollup triggers run per statement)."""
    started = time.monotonic()
    for lo in range(first, last, BATCH):
        n = min(BATCH, last - lo)
        await conn.execute(
            """
            INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at)
            SELECT 'e' || ($1::bigint + i), 'c' || (1 + (($1::bigint + i) * 7919) % $2),
                   ($3::text[])[1 + ($1 + i) % 3], 1 + ($1 + i) % 5,
                   now() - make_interval(secs => (($1 + i) * 104729) % ($4 * 86400))
              FROM generate_series(0::bigint, $5::bigint - 1) AS i
            """, lo, customers, list(METERS), DAYS, n)
        say(f"  loaded {lo + n:,} events ({time.monotonic() - started:.0f} s)")
    return time.monotonic() - started


async def prepare(conn: asyncpg.Connection, sets: Sets) -> dict[str, Any]:
    """From the loaded ledger: every key synced (one `confirmed` push per key, as after earlier
    ticks), counters = the ledger, then A's previous tick and B's new usage. Returns timings."""
    t: dict[str, float] = {}
    started = time.monotonic()
    await conn.execute("DELETE FROM billing.usage_events WHERE request_id LIKE 'tick-%'")
    await conn.execute("TRUNCATE billing.stripe_usage_pushes, billing.usage_counters, billing.usage_sync_queue")
    await conn.execute(
        """
        INSERT INTO billing.stripe_usage_pushes (identifier, customer_id, stripe_customer_id, meter,
            usage_day, value, event_timestamp, kind, status, planned_at, sent_at, settled_at)
        SELECT 'seed-' || customer_id || '-' || meter || '-' || usage_day, customer_id,
               'cus_bench' || substr(customer_id, 2), meter, usage_day, quantity,
               least(usage_day + time '12:00', now() - interval '1 minute'), 'delta', 'confirmed',
               now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'
          FROM billing.usage_daily
        """)
    await conn.execute("UPDATE billing.usage_daily SET synced_seq = changed_seq WHERE synced_seq <> changed_seq")
    t["seed_outbox_seconds"] = time.monotonic() - started
    # A: the previous tick's usage, pushed by it (sent, not yet verified), keys synced.
    await conn.execute(
        """
        INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at)
        SELECT 'tick-a-' || c || '-' || m, c, m, $3, now() - interval '1 minute'
          FROM unnest($1::text[]) AS c, unnest($2::text[]) AS m
        """, sets.ids("A"), list(METERS), NEW_QUANTITY)
    await conn.execute(
        """
        INSERT INTO billing.stripe_usage_pushes (identifier, customer_id, stripe_customer_id, meter,
            usage_day, value, event_timestamp, kind, status, run_id, workflow_id, planned_at, sent_at)
        SELECT 'prev-' || c || '-' || m, c, 'cus_bench' || substr(c, 2), m, (now() AT TIME ZONE 'UTC')::date,
               $3, now() - interval '1 minute', 'delta', 'sent', 'usage-sync-previous', 'usage-sync-previous',
               now() - $4::interval, now() - $4::interval
          FROM unnest($1::text[]) AS c, unnest($2::text[]) AS m
        """, sets.ids("A"), list(METERS), NEW_QUANTITY, PREVIOUS_TICK_AGE)
    await conn.execute("UPDATE billing.usage_daily SET synced_seq = changed_seq WHERE synced_seq <> changed_seq")
    # Counters = the ledger per calendar month (the tick's periods without subscriptions).
    await conn.execute(
        """
        INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
        SELECT customer_id, meter, p, (p + interval '1 month')::date, sum(quantity)
          FROM (SELECT customer_id, meter, date_trunc('month', usage_day)::date AS p, quantity
                  FROM billing.usage_daily) d
         GROUP BY 1, 2, 3
        """)
    # B: this tick's new usage (direct INSERTs, as the application writes it).
    started = time.monotonic()
    await conn.execute(
        """
        INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at)
        SELECT 'tick-b-' || c || '-' || m, c, m, $3, now() - interval '1 minute'
          FROM unnest($1::text[]) AS c, unnest($2::text[]) AS m
        """, sets.ids("B"), list(METERS), NEW_QUANTITY)
    t["ingest_1pct_seconds"] = time.monotonic() - started
    await conn.execute("DROP TABLE IF EXISTS public.bench_b_keys, public.bench_b_counters")
    await conn.execute(
        "CREATE TABLE public.bench_b_keys AS SELECT customer_id, meter, usage_day, synced_seq FROM billing.usage_daily "
        "WHERE changed_seq > synced_seq")
    await conn.execute(
        "CREATE TABLE public.bench_b_counters AS SELECT * FROM billing.usage_counters WHERE customer_id = ANY($1)",
        sets.ids("B"))
    started = time.monotonic()
    await conn.execute("VACUUM ANALYZE")
    t["vacuum_seconds"] = time.monotonic() - started
    return {k: round(v, 1) for k, v in t.items()}


async def establish(conn: asyncpg.Connection, admin: EmulatorAdmin, client: stripe.StripeClient, sets: Sets) -> None:
    """The starting state of every arm: Postgres back to `prepare`'s end, the emulator reset and
    seeded with the outbox's pushes of the customers any arm reads (A, B, C)."""
    await conn.execute("""
        TRUNCATE billing.discrepancies, billing.reconciliation_runs, billing.audit_log CASCADE;
        TRUNCATE billing.usage_sync_queue, billing.stripe_budget_usage;
        DELETE FROM billing.stripe_usage_pushes WHERE identifier NOT LIKE 'seed-%' AND identifier NOT LIKE 'prev-%';
        UPDATE billing.stripe_usage_pushes SET status = 'confirmed', settled_at = sent_at, error = NULL
         WHERE identifier LIKE 'seed-%' AND status <> 'confirmed';
        UPDATE billing.stripe_usage_pushes SET status = 'sent', settled_at = NULL, error = NULL
         WHERE identifier LIKE 'prev-%';
        UPDATE billing.usage_daily d SET synced_seq = b.synced_seq FROM public.bench_b_keys b
         WHERE (d.customer_id, d.meter, d.usage_day) = (b.customer_id, b.meter, b.usage_day);
        DELETE FROM billing.usage_counters WHERE customer_id IN (SELECT customer_id FROM public.bench_b_counters);
        INSERT INTO billing.usage_counters SELECT * FROM public.bench_b_counters;
    """)
    await conn.execute("VACUUM ANALYZE billing.stripe_usage_pushes, billing.usage_daily, billing.usage_counters")
    await admin.reset()
    for m in METERS:
        await client.v1.billing.meters.create_async(params={
            "display_name": m, "event_name": m, "default_aggregation": {"formula": "sum"}})
    customers = sets.ids("A") + sets.ids("B") + sets.ids("C")
    rows = await conn.fetch(
        """
        SELECT identifier, stripe_customer_id, meter, value::text AS value,
               extract(epoch FROM event_timestamp)::bigint AS ts, extract(epoch FROM sent_at)::bigint AS created
          FROM billing.stripe_usage_pushes WHERE customer_id = ANY($1) AND status IN ('sent', 'confirmed')
        """, customers)
    events = [{"event_name": r["meter"], "customer": r["stripe_customer_id"], "value": r["value"],
               "timestamp": r["ts"], "created": r["created"], "identifier": r["identifier"]} for r in rows]
    for lo in range(0, len(events), SEED_CHUNK):
        await admin.seed_meter_events(events[lo:lo + SEED_CHUNK])
    await admin.reset_request_log()
    await admin.reset_request_stats()


def today() -> datetime:
    return datetime.now(UTC)
