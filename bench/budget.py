"""Three workers on one Stripe budget: do they ever exceed it?

    .venv/bin/python -m bench.budget                      # 25/s account, 25/s per endpoint, 30 s per arm
    .venv/bin/python -m bench.budget --seconds 60 --workers 3 --concurrency 10

Starts an embedded Postgres (migrated) and the Stripe emulator limited like Stripe's test mode
(`--limit` ops/s for the account and per endpoint, 429 `rate_limit` beyond). Then, per arm,
`--workers` separate processes, each with its own Postgres pool and `StripeGateway`, read meter
event summaries (the reconciliation's hot call) from `--concurrency` tasks for `--seconds`:

- `shared`: STRIPE_BUDGET=shared, the budget in Postgres at `--limit` with the default reserved
  share (0.2): together the workers may use limit x 0.8;
- `process`: the old per-worker limiter (STRIPE_RATE_LIMIT = limit x 0.8 each), for comparison.

Measured from the emulator's request log (what Stripe saw), per whole second of wall time: the
max and p99 of requests per second against the limit, the mean, and the 429s Stripe answered;
from the workers, the 429s surfaced to callers (a RateLimitError left the gateway after its own
retries). One JSON line per arm on stdout, progress on stderr; figures in docs/PERFORMANCE.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import stripe

from billing.budget import StripeBudget
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway, make_limiter, make_stripe_client
from devstack.components import emulator_command, spawn_emulator
from devstack.postgres import TempPostgres
from devstack.processes import free_port, terminate
from stripe_emulator.admin import EmulatorAdmin

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = "GET /v1/billing/meters/{id}/event_summaries"
RESERVED_SHARE = 0.2  # migration 0020's default


def say(message: str) -> None:
    print(f"[bench.budget] {message}", file=sys.stderr, flush=True)


async def worker(dsn: str, api_base: str, mode: str, rate: float, seconds: float, concurrency: int,
                 meter: str, customer: str) -> dict:
    """One worker process's part: summaries as fast as its limiter and the budget let it."""
    settings = Settings.model_validate({"DATABASE_URL": dsn, "STRIPE_API_BASE": api_base,
                                        "STRIPE_BUDGET": mode, "STRIPE_MAX_NETWORK_RETRIES": 2})
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=concurrency)
    budget = StripeBudget(pool) if mode == "shared" else None
    limiter = make_limiter(rate) if mode == "process" else None
    gateway = StripeGateway(make_stripe_client(settings), limiter, budget)
    deadline = time.monotonic() + seconds
    calls = surfaced = 0
    today = date.today()

    async def loop() -> None:
        nonlocal calls, surfaced
        while time.monotonic() < deadline:
            try:
                await gateway.daily_summaries(meter, customer, today - timedelta(days=2), today)
                calls += 1
            except stripe.RateLimitError:
                surfaced += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await pool.close()
    return {"calls": calls, "surfaced_429": surfaced, "retried_429": gateway.rate_limit_retries,
            "budget_wait_seconds": round(budget.waited_seconds, 1) if budget else 0.0}


def percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)]


async def run_arm(args, dsn: str, api_base: str, admin: EmulatorAdmin, mode: str, meter: str, customer: str) -> dict:
    ours = args.limit * (1 - RESERVED_SHARE)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute("DELETE FROM billing.stripe_budget_usage")
        await pool.execute("UPDATE billing.stripe_budget SET ops_per_second = $1", args.limit)
        await pool.execute("UPDATE billing.stripe_budget_settings SET endpoint_default = $1", args.limit)
    await admin.reset_request_log()
    started = time.time()
    spec = json.dumps({"dsn": dsn, "api_base": api_base, "mode": mode, "rate": ours, "seconds": args.seconds,
                       "concurrency": args.concurrency, "meter": meter, "customer": customer})
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.budget", "--as-worker", spec, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        for _ in range(args.workers)]
    results = [json.loads((await p.communicate())[0]) for p in procs]
    log = await admin.request_log(since=started, route=SUMMARIES)
    ok = [at for at, _, status, _ in log if status == 200]
    # Whole seconds only: the first and the last are partial.
    per_second = Counter(int(at) for at in ok)
    full = [per_second.get(s, 0) for s in range(int(ok[0]) + 1, int(ok[-1]))] if ok else []
    return {
        "arm": mode, "workers": args.workers, "concurrency_per_worker": args.concurrency,
        "limit_per_second": args.limit, "ours_per_second": ours, "seconds": args.seconds,
        "requests": len(log), "answered_200": len(ok),
        "answered_429": sum(1 for *_, status, _ in log if status == 429),
        "per_second_max": max(full, default=0), "per_second_p99": percentile(full, 0.99) if full else 0,
        "per_second_mean": round(sum(full) / len(full), 2) if full else 0.0,
        "seconds_over_limit": sum(1 for n in full if n > args.limit),
        "surfaced_429": sum(r["surfaced_429"] for r in results),
        "gateway_retried_429": sum(r["retried_429"] for r in results),
        "budget_wait_seconds": sum(r["budget_wait_seconds"] for r in results),
    }


async def main(args) -> None:
    pg = await TempPostgres.start("bench", prefix="budget-bench-pg-")
    port = free_port()
    api_base = f"http://127.0.0.1:{port}"
    folder = Path(tempfile.mkdtemp(prefix="budget-bench-"))
    emulator = spawn_emulator(folder / "emulator.log", emulator_command(host="127.0.0.1", port=port), api_base,
                              cwd=ROOT)
    try:
        async with EmulatorAdmin(api_base) as admin:
            await admin.configure(rate_limit=args.limit, endpoint_rate_limit=args.limit)
            client = make_stripe_client(Settings.model_validate({"STRIPE_API_BASE": api_base}))
            meter = await client.v1.billing.meters.create_async(params={
                "display_name": "bench", "event_name": "bench_calls", "default_aggregation": {"formula": "sum"}})
            customer = await client.v1.customers.create_async(params={"email": "bench@example.com"})
            for mode in args.arms.split(","):
                say(f"arm {mode}: {args.workers} workers x {args.concurrency} tasks for {args.seconds:g} s")
                print(json.dumps(await run_arm(args, pg.dsn, api_base, admin, mode, meter.id, customer.id)),
                      flush=True)
    finally:
        terminate(emulator.pid)
        shutil.rmtree(folder, ignore_errors=True)
        await pg.close()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=10, help="Stripe calls in flight per worker")
    p.add_argument("--seconds", type=float, default=30.0, help="per arm")
    p.add_argument("--limit", type=float, default=25.0, help="Stripe's limit: account and per endpoint, ops/s")
    p.add_argument("--arms", default="shared,process")
    p.add_argument("--as-worker", help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    ns = parse()
    if ns.as_worker:
        print(json.dumps(asyncio.run(worker(**json.loads(ns.as_worker)))))
    else:
        asyncio.run(main(ns))
