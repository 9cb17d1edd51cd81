"""The usage tick (UsageTick) at scale, end to end through Temporal, against a raw script and the
full-read pass it replaced.

    .venv/bin/python -m bench.tick --sizes 1m,10m --customers 100000

One stack for the whole run (bench/reconcile/stack.py: embedded Postgres with
pg_stat_statements, the emulator subprocess, the Temporal dev server, `python -m worker`).
`--customers` customers x 3 meters; the ledger grows to each size in turn (INSERT ... SELECT
generate_series, the rollup triggers of migration 0021 maintaining billing.usage_daily), so
every size has the same customers and the same 1% activity (bench/tick/data.py): B, 1% of
the customers, has one new event per meter today (changed keys); A, another 1%, was pushed by
the previous tick two hours ago (`sent`, older than the 1 h settle window: settled keys to verify).

Stripe is limited like live Stripe: the emulator at 100 requests/s for the account, 25/s per
endpoint, 1000/s for POST /v1/billing/meter_events; the shared budget (billing/budget.py
set_budget, as `billing-recon budget set --account 100 --endpoint create_meter_event=1000
--endpoint meter_event_summaries=25`) with its default reserved share (0.2). Then, per size,
each arm from the same starting state (data.establish):

  tick      a `UsageTick` workflow (apply) started by the client, run by `python -m worker`
            (production wiring: STRIPE_BUDGET=shared, STRIPE_RATE_LIMIT=0 so the budget is the
            only limiter); timed from start_workflow to its result
  raw       bench/tick/raw.py in this process: the same incremental work, plain asyncio, the
            same StripeGateway and shared budget
  fullread  what usage-sync did before the tick: ReconcileUsage (apply) over the 31-day window,
            one summary read per (customer, meter), on a SAMPLE of customers (B, whose keys it
            corrects, and C, idle ones), emulator and worker unlimited (--fullread-sample)

Per arm: wall, Stripe calls from the emulator's request log (by route and status), Postgres
execution time from pg_stat_statements (server side; the budget's slot function apart), Postgres
CPU, the worker's peak RSS (VmHWM, the worker is restarted per arm) and CPU. One JSON line per
(size, arm) on stdout, progress on stderr."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from temporalio.client import Client

from bench.reconcile.stack import Stack, cpu_seconds, peak_rss_mib
from bench.tick import data
from bench.tick.raw import raw_tick
from billing import db
from billing.budget import StripeBudget, set_budget
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway, make_stripe_client
from common.client import data_converter
from common.types import Mode
from devstack.postgres import postgres_pid, restart_postgres, stop_postgres
from reconcile.tick_types import UsageTickInput, UsageTickResult
from reconcile.types import ReconcileResult, ReconcileUsageInput
from stripe_emulator.admin import EmulatorAdmin

API_KEY = "sk_test_bench"
TASK_QUEUE = "tick-bench"
SETTLE_SECONDS = 3600
# Live Stripe: account 100/s, 25/s per endpoint (meter event summaries), meter events 1000/s.
LIVE_EMULATOR = {"rate_limit": 100, "endpoint_rate_limit": 25,
                 "endpoint_rate_limits": {"POST /v1/billing/meter_events": 1000}}
UNLIMITED_EMULATOR = {"rate_limit": 0}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] [bench.tick] {message}", file=sys.stderr, flush=True)


def size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * {"k": 1e3, "m": 1e6}[text[-1]]) if text[-1] in "km" else int(text)


async def enable_pg_stat_statements(stack: Stack) -> None:
    assert stack.pg is not None
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        await conn.close()
    await asyncio.to_thread(restart_postgres, stack.pg.pgdata)
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()


def pg_cpu(stack: Stack) -> float:
    """CPU seconds of Postgres (all backends). Its pid, read from the data folder: the restart
    that loads pg_stat_statements gave it a new one (Stack.cpu() still has the first)."""
    assert stack.pg is not None
    pid = postgres_pid(stack.pg.pgdata)
    return cpu_seconds(pid, children=True) if pid else float("nan")


async def pg_reset(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_stat_statements_reset()")


async def pg_time(conn: asyncpg.Connection) -> dict[str, Any]:
    """Server-side execution time of every statement since the reset (pg_stat_statements
    total_exec_time: planning excluded, client waits excluded), the budget's slot function apart."""
    rows = await conn.fetch(
        """
        SELECT query, calls, total_exec_time FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC
        """)
    budget = [r for r in rows if "stripe_budget_slot" in r["query"]]
    rest = [r for r in rows if "stripe_budget_slot" not in r["query"]]
    return {
        "postgres_exec_seconds": round(sum(r["total_exec_time"] for r in rest) / 1000, 3),
        "postgres_statements": sum(r["calls"] for r in rest),
        "budget_slot_exec_seconds": round(sum(r["total_exec_time"] for r in budget) / 1000, 3),
        "budget_slot_calls": sum(r["calls"] for r in budget),
        "postgres_top": [{"ms": round(r["total_exec_time"], 1), "calls": r["calls"],
                          "query": " ".join(r["query"].split())[:110]} for r in rest[:6]],
    }


async def stripe_calls(admin: EmulatorAdmin) -> dict[str, Any]:
    log = await admin.request_log()
    ok = [e for e in log if e[2] < 400]
    return {"stripe_calls": len(ok), "stripe_429": sum(1 for e in log if e[2] == 429),
            "stripe_calls_by_route": dict(Counter(e[1] for e in ok)),
            "stripe_errors_by_status": dict(Counter(e[2] for e in log if e[2] >= 400))}


async def check(conn: asyncpg.Connection, sets: data.Sets) -> dict[str, int]:
    """After an arm: B's keys synced, each with our live pushes = the ledger."""
    return dict(await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE d.changed_seq > d.synced_seq) AS unsynced_b_keys,
               count(*) FILTER (WHERE d.quantity IS DISTINCT FROM p.total) AS b_keys_outbox_not_ledger
          FROM billing.usage_daily d
          LEFT JOIN (SELECT customer_id, meter, usage_day, sum(value) AS total FROM billing.stripe_usage_pushes
                      WHERE status IN ('planned', 'sent', 'confirmed') GROUP BY 1, 2, 3) p
               USING (customer_id, meter, usage_day)
         WHERE d.customer_id = ANY($1) AND d.usage_day = (now() AT TIME ZONE 'UTC')::date
        """, sets.ids("B")))


def worker_env(limited: bool) -> dict[str, str]:
    if limited:
        return {"STRIPE_API_KEY": API_KEY, "BILLING_TASK_QUEUE": TASK_QUEUE, "STRIPE_BUDGET": "shared",
                "STRIPE_RATE_LIMIT": "0"}
    return {"STRIPE_API_KEY": API_KEY, "BILLING_TASK_QUEUE": TASK_QUEUE, "STRIPE_BUDGET": "process",
            "STRIPE_RATE_LIMIT": "0"}


async def arm_tick(stack: Stack, client: Client, conn: asyncpg.Connection, admin: EmulatorAdmin,
                   args: argparse.Namespace) -> dict[str, Any]:
    pid = stack.start_worker(worker_env(limited=True), profile=args.profile_worker)
    await admin.reset_request_log()
    await pg_reset(conn)
    cpu0, pg_cpu0 = cpu_seconds(pid), pg_cpu(stack)
    started = time.perf_counter()
    handle = await client.start_workflow(
        "UsageTick", UsageTickInput(mode=Mode.APPLY, actor="bench", page_size=args.page_size,
                                    settle_seconds=SETTLE_SECONDS),
        id=f"bench-tick-{uuid.uuid4().hex[:8]}", task_queue=TASK_QUEUE, result_type=UsageTickResult,
        execution_timeout=timedelta(hours=1))
    result: UsageTickResult = await handle.result()
    wall = time.perf_counter() - started
    out = {"wall_seconds": round(wall, 2), "worker_peak_rss_mib": round(peak_rss_mib(pid), 1),
           "worker_cpu_seconds": round(cpu_seconds(pid) - cpu0, 2),
           "postgres_cpu_seconds": round(pg_cpu(stack) - pg_cpu0, 2),
           "pages": result.pages, "counts": result.counts.model_dump()}
    history = await handle.fetch_history()
    out["history_events"] = len(history.events)
    return out


async def arm_raw(stack: Stack, conn: asyncpg.Connection, admin: EmulatorAdmin,
                  args: argparse.Namespace) -> dict[str, Any]:
    stack.stop_worker()
    settings = Settings.model_validate({"STRIPE_API_BASE": stack.emulator_url, "STRIPE_API_KEY": API_KEY})
    async with asyncpg.create_pool(stack.dsn, min_size=1, max_size=10, init=db._init_connection) as pool:
        gateway = StripeGateway(make_stripe_client(settings), None, StripeBudget(pool))
        await admin.reset_request_log()
        await pg_reset(conn)
        pg_cpu0, cpu0 = pg_cpu(stack), time.process_time()
        started = time.perf_counter()
        counts = await raw_tick(pool, gateway, settle_seconds=SETTLE_SECONDS, page_size=args.page_size)
        wall = time.perf_counter() - started
    return {"wall_seconds": round(wall, 2), "process_cpu_seconds": round(time.process_time() - cpu0, 2),
            "postgres_cpu_seconds": round(pg_cpu(stack) - pg_cpu0, 2), "counts": counts}


async def arm_fullread(stack: Stack, client: Client, conn: asyncpg.Connection, admin: EmulatorAdmin,
                       sets: data.Sets, args: argparse.Namespace) -> dict[str, Any]:
    pid = stack.start_worker(worker_env(limited=False))
    customers = sets.ids("B") + sets.ids("C")
    today = data.today().date()
    await admin.reset_request_log()
    await pg_reset(conn)
    cpu0, pg_cpu0 = cpu_seconds(pid), pg_cpu(stack)
    started = time.perf_counter()
    handle = await client.start_workflow(
        "ReconcileUsage", ReconcileUsageInput(
            start_date=today - timedelta(days=data.DAYS), end_date=today, customers=customers,
            meters=list(data.METERS), mode=Mode.APPLY, settle_seconds=1, auto_approve_over_reporting=True,
            actor="bench"),
        id=f"bench-fullread-{uuid.uuid4().hex[:8]}", task_queue=TASK_QUEUE, result_type=ReconcileResult,
        execution_timeout=timedelta(hours=2))
    result: ReconcileResult = await handle.result()
    wall = time.perf_counter() - started
    c = result.counts
    return {"wall_seconds": round(wall, 2), "sample_customers": len(customers),
            "worker_peak_rss_mib": round(peak_rss_mib(pid), 1),
            "worker_cpu_seconds": round(cpu_seconds(pid) - cpu0, 2),
            "postgres_cpu_seconds": round(pg_cpu(stack) - pg_cpu0, 2),
            "counts": {"keys_checked": c.keys_checked, "drift_count": c.drift_count,
                       "corrections_pushed": c.corrections_pushed, "counter_repairs": c.counter_repairs,
                       "stripe_writes": c.stripe_writes,
                       "verify_customers": result.verify_counts.customers_scanned if result.verify_counts else None}}


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs the bench; prints and returns one line per (size, arm)."""
    lines: list[dict[str, Any]] = []
    say(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    stack = Stack()
    try:
        await stack.start()
        await enable_pg_stat_statements(stack)
        say(f"stack up ({stack.folder})")
        sdk = make_stripe_client(Settings.model_validate({"STRIPE_API_BASE": stack.emulator_url,
                                                          "STRIPE_API_KEY": API_KEY}))
        client = await Client.connect(stack.temporal_address, data_converter=data_converter)
        sets = data.Sets(customers=args.customers, active=max(1, args.customers // 100))
        conn = await db.connect(stack.dsn)
        async with EmulatorAdmin(stack.emulator_url, timeout=300) as admin:
            await data.create_customers(conn, args.customers)
            await set_budget(conn, actor="bench", reason="live Stripe: account 100/s, meter events 1000/s, "
                             "summaries 25/s", account=Decimal(100),
                             endpoints={"create_meter_event": Decimal(1000), "meter_event_summaries": Decimal(25)},
                             change_key=uuid.uuid4().hex)
            loaded = 0
            for events in (size(s) for s in args.sizes.split(",")):
                say(f"size {events:,} events, {args.customers:,} customers x {len(data.METERS)} meters")
                load_s = await data.load_events(conn, loaded, events, args.customers, say)
                loaded = events
                t = time.monotonic()
                timings = await data.prepare(conn, sets)
                prepare_s = time.monotonic() - t
                keys = await conn.fetchval("SELECT count(*) FROM billing.usage_daily")
                say(f"  ledger loaded ({load_s:.0f} s for this step), prepared in {prepare_s:.0f} s: {keys:,} keys "
                    f"{json.dumps(timings)}")
                line_base = {"events": events, "customers": args.customers, "meters": len(data.METERS),
                             "keys": keys, "active_customers": sets.active, "load_seconds_this_step": round(load_s, 1),
                             "prepare_seconds": round(prepare_s, 1), **timings}
                for arm in args.arms.split(","):
                    t = time.monotonic()
                    await data.establish(conn, admin, sdk, sets)
                    await admin.configure(**(UNLIMITED_EMULATOR if arm == "fullread" else LIVE_EMULATOR))
                    say(f"  {arm}: starting state in {time.monotonic() - t:.1f} s")
                    if arm == "tick":
                        r = await arm_tick(stack, client, conn, admin, args)
                    elif arm == "raw":
                        r = await arm_raw(stack, conn, admin, args)
                    elif arm == "fullread":
                        r = await arm_fullread(stack, client, conn, admin, sets, args)
                    else:
                        raise SystemExit(f"unknown arm {arm}")
                    r.update(await pg_time(conn))
                    r.update(await stripe_calls(admin))
                    r["check"] = await check(conn, sets)
                    if arm in ("tick", "raw"):
                        cnt = r["counts"]
                        basis = cnt.get("changed_keys", 0) + cnt.get("queued_keys", 0) + cnt.get("settled_keys", 0)
                        r["calls_per_key"] = round(r["stripe_calls"] / max(1, basis), 3)
                    line = {**line_base, "arm": arm, **r}
                    print(json.dumps(line, default=str), flush=True)
                    lines.append(line)
                    say(f"  {arm}: wall {r['wall_seconds']} s, Stripe calls {r['stripe_calls']}, "
                        f"Postgres exec {r['postgres_exec_seconds']} s, check {r['check']}")
        await conn.close()
    finally:
        stack.stop_worker()
        if stack.pg is not None:  # the server restarted for pg_stat_statements is not the one cleanup knows
            await asyncio.to_thread(stop_postgres, stack.pg.pgdata)
        await stack.stop(keep=args.keep)
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tick", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1m,10m", help="usage events, growing in one run, e.g. 1m,10m")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--arms", default="tick,raw,fullread", help="arms per size, in this order")
    p.add_argument("--page-size", type=int, default=500, help="UsageTick page_size (and the raw script's)")
    p.add_argument("--keep", action="store_true", help="keep the stack's folder (logs) afterwards")
    p.add_argument("--profile-worker", metavar="PY_SPY",
                   help="run the tick arm's worker under this py-spy binary (raw stacks in the kept folder)")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
