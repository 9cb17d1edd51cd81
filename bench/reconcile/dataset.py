"""The benchmark's data: usage events (COPY), customers, counters, an outbox that says every key
was pushed long ago, the same pushes seeded into the emulator (admin bulk seed), drift on 1% of
the keys, and the reset that gives each arm the same starting state.

Starting state of every arm, after `establish`:
  ledger      N events + the late events of the under-reported drift keys
  counters    = the ledger before drift (so every under-reported key also drifts its counter)
  outbox      one `confirmed` push per (customer, meter, day), sent two days ago
  Stripe      those pushes + one extra event (value 3) on each over-reported drift key
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe

from billing import db
from billing.periods import day_start
from stripe_emulator.admin import EmulatorAdmin

METERS = ("api_requests", "storage_gb_hours")
PROBE_METER = "bench_probe"  # one zero event per customer, far outside the window: they exist
SEED_RUN = "bench-seed"
SEED_AGE = timedelta(days=2)  # seeded pushes are settled and past Stripe's 24 h cancel window
COPY_CHUNK = 200_000
STRIPE_SEED_CHUNK = 20_000
LATE_QUANTITY = 7
EXTRA_VALUE = 3


@dataclass
class Dataset:
    events: int
    customers: int
    days: int
    start: date
    end: date  # inclusive
    keys: int = 0
    under: list[tuple[str, str, date]] | None = None  # drifted keys: late usage in the ledger
    over: list[tuple[str, str, date]] | None = None  # drifted keys: an extra event in Stripe


def cid(i: int) -> str:
    return f"bc{i:07d}"


def scid(i: int) -> str:
    return f"cus_bench{i:07d}"


def _noon(day: date, now: datetime) -> datetime:
    return min(day_start(day) + timedelta(hours=12), now - timedelta(minutes=1)).replace(microsecond=0)


async def generate(dsn: str, n_events: int, n_customers: int, days: int, seed: int = 42) -> Dataset:
    """Customers, usage events (COPY into the table with its constraints dropped and rebuilt:
    the bulk-load idiom) and counters equal to the ledger."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    end = now.date()
    start = end - timedelta(days=days - 1)
    t0 = day_start(start).timestamp()
    span = now.timestamp() - t0
    conn = await db.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO billing.customers (customer_id, stripe_customer_id, name)
            SELECT 'bc' || lpad(i::text, 7, '0'), 'cus_bench' || lpad(i::text, 7, '0'), 'Bench ' || i
              FROM generate_series(0, $1 - 1) AS i
            """, n_customers)
        await conn.execute("""
            ALTER TABLE billing.usage_events DROP CONSTRAINT usage_events_customer_id_fkey;
            ALTER TABLE billing.usage_events DROP CONSTRAINT usage_events_pkey;
            DROP INDEX billing.usage_events_key_idx;
        """)
        rng = random.Random(seed)
        for lo in range(0, n_events, COPY_CHUNK):
            hi = min(n_events, lo + COPY_CHUNK)
            rnd = rng.random
            records = [
                (f"ev{g}", cid(int(rnd() * n_customers)), METERS[g & 1], Decimal(1 + int(rnd() * 50)),
                 datetime.fromtimestamp(t0 + rnd() * span, UTC), "bench")
                for g in range(lo, hi)]
            await conn.copy_records_to_table(
                "usage_events", schema_name="billing",
                columns=["request_id", "customer_id", "meter", "quantity", "occurred_at", "source"],
                records=records)
        await conn.execute("""
            ALTER TABLE billing.usage_events ADD CONSTRAINT usage_events_pkey PRIMARY KEY (request_id);
            CREATE INDEX usage_events_key_idx ON billing.usage_events (customer_id, meter, occurred_at);
            ALTER TABLE billing.usage_events ADD CONSTRAINT usage_events_customer_id_fkey
                FOREIGN KEY (customer_id) REFERENCES billing.customers (customer_id);
        """)
        await conn.execute(
            """
            INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
            SELECT customer_id, meter, p, (p + interval '1 month')::date, sum(quantity)
              FROM (SELECT customer_id, meter, quantity,
                           date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p
                      FROM billing.usage_events) u
             GROUP BY 1, 2, 3
            """)
        # The outbox: every key pushed (and confirmed) two days ago.
        await conn.execute(
            """
            INSERT INTO billing.stripe_usage_pushes
                (identifier, customer_id, stripe_customer_id, meter, usage_day, value, event_timestamp,
                 kind, status, run_id, workflow_id, planned_at, sent_at, settled_at)
            SELECT 'bseed_' || md5(k.customer_id || '|' || k.meter || '|' || k.day), k.customer_id,
                   c.stripe_customer_id, k.meter, k.day, k.total,
                   least(k.day::timestamp AT TIME ZONE 'UTC' + interval '12 hours', $2::timestamptz),
                   'delta', 'confirmed', $1, $1, $3, $3, $3
              FROM (SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day,
                           sum(quantity) AS total
                      FROM billing.usage_events GROUP BY 1, 2, 3) k
              JOIN billing.customers c USING (customer_id)
            """, SEED_RUN, now - timedelta(minutes=1), now - SEED_AGE)
        keys = await conn.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return Dataset(events=n_events, customers=n_customers, days=days, start=start, end=end, keys=keys)


async def inject_drift(dsn: str, ds: Dataset, fraction: float) -> None:
    """`fraction` of the keys, picked deterministically: half get late usage in the ledger
    (under-reported, and their counter drifts), half an extra event in Stripe (over-reported).
    The ledger part is permanent; the Stripe part is re-seeded by `establish`."""
    n = max(2, int(ds.keys * fraction))
    conn = await db.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT customer_id, meter, usage_day FROM billing.stripe_usage_pushes
             WHERE run_id = $1 ORDER BY md5(identifier) LIMIT $2
            """, SEED_RUN, n)
        picked = [(r["customer_id"], r["meter"], r["usage_day"]) for r in rows]
        ds.under, ds.over = picked[: n // 2], picked[n // 2:]
        now = datetime.now(UTC)
        await conn.copy_records_to_table(
            "usage_events", schema_name="billing",
            columns=["request_id", "customer_id", "meter", "quantity", "occurred_at", "source"],
            records=[(f"late-{i}", c, m, Decimal(LATE_QUANTITY), _noon(d, now), "bench-drift")
                     for i, (c, m, d) in enumerate(ds.under)])
        # The counters as they are now (= the ledger before drift): restored before each arm.
        await conn.execute("DROP TABLE IF EXISTS public.bench_counters")
        await conn.execute("CREATE TABLE public.bench_counters AS SELECT * FROM billing.usage_counters")
        await conn.execute("ANALYZE billing.usage_events")
    finally:
        await conn.close()


async def establish(dsn: str, emulator_url: str, stripe_client: stripe.StripeClient, ds: Dataset) -> None:
    """The same starting state for every arm: Postgres back to seed + drift, the emulator reset
    and re-seeded with the outbox's pushes and the over-reported drift."""
    conn = await db.connect(dsn)
    try:
        await conn.execute("""
            TRUNCATE billing.discrepancies, billing.reconciliation_runs, billing.audit_log CASCADE;  -- CASCADE: revenue findings reference runs
            DELETE FROM billing.stripe_usage_pushes WHERE run_id IS DISTINCT FROM 'bench-seed';
            UPDATE billing.stripe_usage_pushes SET status = 'confirmed', error = NULL, cancelled_at = NULL
             WHERE status <> 'confirmed';
            TRUNCATE billing.usage_counters;
            INSERT INTO billing.usage_counters SELECT * FROM public.bench_counters;
        """)
        await conn.execute("VACUUM ANALYZE billing.stripe_usage_pushes")
        await conn.execute("VACUUM ANALYZE billing.usage_counters")
        await conn.execute("VACUUM ANALYZE billing.discrepancies")
        async with EmulatorAdmin(emulator_url, timeout=300) as admin:
            await admin.reset()
            for name in (*METERS, PROBE_METER):
                await stripe_client.v1.billing.meters.create_async(params={
                    "display_name": name, "event_name": name, "default_aggregation": {"formula": "sum"}})
            old = int((datetime.now(UTC) - timedelta(days=200)).timestamp())
            for lo in range(0, ds.customers, STRIPE_SEED_CHUNK):
                await admin.seed_meter_events([
                    {"event_name": PROBE_METER, "customer": scid(i), "value": "0", "timestamp": old,
                     "created": old, "identifier": f"probe-{i}"}
                    for i in range(lo, min(ds.customers, lo + STRIPE_SEED_CHUNK))])
            async with conn.transaction():
                cur = conn.cursor(
                    """
                    SELECT identifier, stripe_customer_id, meter, value::text AS value,
                           extract(epoch FROM event_timestamp)::bigint AS ts,
                           extract(epoch FROM sent_at)::bigint AS created
                      FROM billing.stripe_usage_pushes WHERE run_id = $1
                    """, SEED_RUN, prefetch=STRIPE_SEED_CHUNK)
                batch: list[dict[str, Any]] = []
                async for r in cur:
                    batch.append({"event_name": r["meter"], "customer": r["stripe_customer_id"],
                                  "value": r["value"], "timestamp": r["ts"], "created": r["created"],
                                  "identifier": r["identifier"]})
                    if len(batch) >= STRIPE_SEED_CHUNK:
                        await admin.seed_meter_events(batch)
                        batch = []
                if batch:
                    await admin.seed_meter_events(batch)
            now = datetime.now(UTC)
            created = int((now - SEED_AGE).timestamp())
            assert ds.over is not None
            if ds.over:
                await admin.seed_meter_events([
                    {"event_name": m, "customer": "cus_bench" + c[2:], "value": str(EXTRA_VALUE),
                     "timestamp": int(_noon(d, now).timestamp()), "created": created,
                     "identifier": f"legacy-dup-{i}"}
                    for i, (c, m, d) in enumerate(ds.over)])
            await admin.reset_request_stats()
    finally:
        await conn.close()


async def verify(dsn: str, gateway: Any, ds: Dataset) -> dict[str, int]:
    """After an arm: every drifted key has Stripe = ledger (read through the SDK, like the
    reconciler), and every counter equals the ledger."""
    assert ds.under is not None and ds.over is not None
    import asyncio

    meters = {m.event_name: m.id for m in await gateway.list_meters()}
    conn = await db.connect(dsn)
    try:
        drifted = ds.under + ds.over
        ledger = {
            (r["customer_id"], r["meter"], r["day"]): Decimal(r["total"])
            for r in await conn.fetch(
                """
                SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(quantity) AS total
                  FROM billing.usage_events
                 WHERE customer_id = ANY($1) AND occurred_at >= $2 AND occurred_at < $3
                 GROUP BY 1, 2, 3
                """, sorted({c for c, _, _ in drifted}), day_start(ds.start), day_start(ds.end) + timedelta(days=1))}
        counter_mismatches = await conn.fetchval(
            """
            SELECT count(*) FROM billing.usage_counters c
              FULL JOIN (SELECT customer_id, meter, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p,
                                sum(quantity) AS total
                           FROM billing.usage_events GROUP BY 1, 2, 3) l
                ON l.customer_id = c.customer_id AND l.meter = c.meter AND l.p = c.period_start
             WHERE c.value IS DISTINCT FROM l.total
            """)
    finally:
        await conn.close()
    pairs = sorted({(c, m) for c, m, _ in drifted})
    sem = asyncio.Semaphore(16)
    summaries: dict[tuple[str, str], dict[date, Decimal]] = {}

    async def one(c: str, m: str) -> None:
        async with sem:
            summaries[(c, m)] = await gateway.daily_summaries(meters[m], "cus_bench" + c[2:], ds.start, ds.end)

    async with asyncio.TaskGroup() as tg:
        for c, m in pairs:
            tg.create_task(one(c, m))
    unfixed = sum(1 for c, m, d in drifted if summaries[(c, m)].get(d, Decimal(0)) != ledger.get((c, m, d)))
    return {"drifted_keys": len(drifted), "unfixed_keys": unfixed, "counter_mismatches": int(counter_mismatches)}
