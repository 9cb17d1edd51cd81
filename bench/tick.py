"""The usage tick at scale: does its cost follow the changed keys, not the ledger?

    .venv/bin/python -m bench.tick --sizes 1m,3m --customers 100000

Per size, on a fresh embedded Postgres (migrated) and the emulator (unlimited): `--customers`
customers x 3 meters, N usage events over the last 30 days, inserted by SQL (the rollup triggers
maintain billing.usage_daily as they go), then one tick so that every key is synced. Then the
measured tick: 1% of the customers get one new event per meter today (direct INSERTs, as an
application would), and one `UsageTick` page runs (the activity itself, `TickActivities.page`,
under temporalio's ActivityEnvironment, so the figures are the tick's work without the engine).

Reported per size (one JSON line): events, keys, the measured tick's changed keys, Stripe calls
(from the emulator's request log) and their ratio to the changed + settled keys, the tick's wall
time, its Postgres time (the sum of asyncpg's per-query elapsed times), the ingest time of the
1% (triggers included), and this process's peak RSS. Figures in docs/PERFORMANCE.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from temporalio.testing import ActivityEnvironment

from billing import db
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway, make_stripe_client
from devstack.components import emulator_command, spawn_emulator
from devstack.postgres import TempPostgres
from devstack.processes import free_port, terminate
from reconcile.tick import TickActivities
from reconcile.tick_types import TickPageInput
from stripe_emulator.admin import EmulatorAdmin

ROOT = Path(__file__).resolve().parents[1]
METERS = ("api_requests", "storage_gb_hours", "gpu_seconds")
DAYS = 30


def say(message: str) -> None:
    print(f"[bench.tick] {message}", file=sys.stderr, flush=True)


def size(text: str) -> int:
    text = text.lower()
    return int(float(text[:-1]) * {"k": 1e3, "m": 1e6}[text[-1]]) if text[-1] in "km" else int(text)


class PgClock:
    """Postgres time: asyncpg's elapsed time of every query of the pool's connections."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def record(self, query: asyncpg.connection.LoggedQuery) -> None:
        self.seconds += query.elapsed

    async def init(self, conn: asyncpg.Connection) -> None:
        await db._init_connection(conn)  # the worker's pool setup (jsonb codec), then the clock
        conn.add_query_logger(self.record)


async def run_size(events: int, customers: int, api_base: str, admin: EmulatorAdmin) -> dict:
    pg = await TempPostgres.start("bench", prefix="tick-bench-pg-")
    clock = PgClock()
    try:
        async with asyncpg.create_pool(pg.dsn, min_size=1, max_size=2) as setup:
            await setup.execute(
                "INSERT INTO billing.customers (customer_id, stripe_customer_id) "
                "SELECT 'c' || i, 'cus_bench' || i FROM generate_series(1, $1) AS i", customers)
            started = time.monotonic()
            per_batch = 1_000_000
            for first in range(0, events, per_batch):
                n = min(per_batch, events - first)
                await setup.execute(
                    """
                    INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at)
                    SELECT 'e' || ($1::bigint + i), 'c' || (1 + (($1::bigint + i) * 7919) % $2),
                           ($3::text[])[1 + ($1 + i) % 3], 1 + ($1 + i) % 5,
                           now() - make_interval(secs => (($1 + i) * 104729) % ($4 * 86400))
                      FROM generate_series(0::bigint, $5::bigint - 1) AS i
                    """, first, customers, list(METERS), DAYS, n)
            say(f"{events:,} events in {time.monotonic() - started:.0f} s")
            # Every key synced already (as after earlier ticks): the outbox holds one push per key.
            await setup.execute(
                """
                INSERT INTO billing.stripe_usage_pushes (identifier, customer_id, stripe_customer_id, meter,
                    usage_day, value, event_timestamp, kind, status, sent_at, settled_at)
                SELECT 'seed-' || customer_id || '-' || meter || '-' || usage_day, customer_id,
                       'cus_bench' || substr(customer_id, 2), meter, usage_day, quantity,
                       usage_day + time '12:00', 'delta', 'confirmed', now() - interval '2 days', now()
                  FROM billing.usage_daily
                """)
            await setup.execute("UPDATE billing.usage_daily SET synced_seq = changed_seq")
            await setup.execute("VACUUM ANALYZE")
            keys = await setup.fetchval("SELECT count(*) FROM billing.usage_daily")
            active = max(1, customers // 100)
            started = time.monotonic()
            await setup.execute(
                """
                INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at)
                SELECT 'new-' || c || '-' || m, 'c' || c, m, 3, now() - interval '1 minute'
                  FROM generate_series(1, $1) AS c, unnest($2::text[]) AS m
                """, active, list(METERS))
            ingest_seconds = time.monotonic() - started

        settings = Settings.model_validate({"DATABASE_URL": pg.dsn, "STRIPE_API_BASE": api_base,
                                            "STRIPE_BUDGET": "process", "STRIPE_RATE_LIMIT": 0})
        async with asyncpg.create_pool(pg.dsn, min_size=1, max_size=10, init=clock.init) as pool:
            acts = TickActivities(pool, StripeGateway(make_stripe_client(settings), None), settings)
            await admin.reset_request_log()
            started = time.monotonic()
            page = 0
            total = None
            while True:
                result = await ActivityEnvironment().run(acts.page, TickPageInput(
                    run_id="bench-tick", workflow_run_id="bench", actor="bench", page=page, page_size=500,
                    settle_seconds=3600, write=True))
                total = result.counts if total is None else total.add(result.counts)
                page += 1
                if not result.more:
                    break
            wall = time.monotonic() - started
        calls = len(await admin.request_log())
        assert total is not None
        touched = total.changed_keys + total.queued_keys + total.settled_keys
        return {
            "events": events, "customers": customers, "keys": keys, "active_customers": active,
            "changed_keys": total.changed_keys, "settled_keys": total.settled_keys, "pushed": total.pushed,
            "stripe_calls": calls, "calls_per_key": round(calls / max(1, touched), 3),
            "tick_seconds": round(wall, 2), "tick_postgres_seconds": round(clock.seconds, 3),
            "ingest_1pct_seconds": round(ingest_seconds, 3), "pages": page,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        await pg.close()


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    api_base = f"http://127.0.0.1:{port}"
    folder = Path(tempfile.mkdtemp(prefix="tick-bench-"))
    emulator = spawn_emulator(folder / "emulator.log", emulator_command(host="127.0.0.1", port=port, rate_limit=0),
                              api_base, cwd=ROOT)
    try:
        async with EmulatorAdmin(api_base) as admin:
            client = make_stripe_client(Settings.model_validate({"STRIPE_API_BASE": api_base}))
            for m in METERS:
                await client.v1.billing.meters.create_async(params={
                    "display_name": m, "event_name": m, "default_aggregation": {"formula": "sum"}})
            for events in (size(s) for s in args.sizes.split(",")):
                say(f"size {events:,} events, {args.customers:,} customers")
                print(json.dumps(await run_size(events, args.customers, api_base, admin)), flush=True)
    finally:
        terminate(emulator.pid)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.tick", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1m,3m", help="usage events per run, e.g. 1m,10m")
    p.add_argument("--customers", type=int, default=100_000)
    asyncio.run(main(p.parse_args()))
