"""Run the scenario twice on one private stack, fault-free then under chaos, and compare.

Chaos = SIGKILL of the worker process at random moments (seeded) during each workload, one
Temporal dev server restart, one Postgres restart, rounds of `pg_terminate_backend` on the
worker's connections, and the emulator answering 20% 500s (some of them *after* the write
landed), 10% 429s and added latency, with our client-side limit at 25 ops/s like Stripe's
test mode."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import stripe
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from backfill.types import BackfillResult, CatchUpBackfillInput
from billing.db import create_pool
from common.client import data_converter
from common.types import Mode
from reconcile.types import ReconcileResult, ReconcileUsageInput
from stripe_emulator.admin import EmulatorAdmin
from webhooks.types import ReplayResult, ReplayWebhooksInput

from . import scenario, state
from .stack import ChaosStack

TASK_QUEUE = "chaos"
STRIPE_RATE_LIMIT = 25  # ops/s: Stripe's test-mode limit, ours and the emulator's
# First match wins: POST 500s after the write landed, 500s before it, 429s, latency for the rest.
# Overall about 20% 500s and 10% 429s of every /v1 request.
FAULTS = [
    {"method": "POST", "path_prefix": "/v1/", "status": 500, "after": True, "probability": 0.08},
    {"path_prefix": "/v1/", "status": 500, "probability": 0.15},
    {"path_prefix": "/v1/", "status": 429, "probability": 0.13},
    {"path_prefix": "/v1/", "status": None, "probability": 1.0, "latency_ms": 40},
]
PHASE_LIMIT_SECONDS = 45 * 60
KILL_SHARE = {"a": 0.5, "b": 0.2, "c": 0.3}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def register_namespace(address: str, namespace: str) -> Client:
    base = await Client.connect(address)
    await base.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)))
    client = await Client.connect(address, namespace=namespace, data_converter=data_converter)
    for _ in range(100):  # the dev server's namespace cache needs a moment
        try:
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
            return client
        except RPCError:
            await asyncio.sleep(0.2)
    return client


async def result_surviving_restarts(handle: WorkflowHandle) -> Any:
    while True:
        try:
            return await handle.result()
        except RPCError as e:  # the dev server is restarting: ask again
            say(f"  (result poll: {e.status.name}; retrying)")
            await asyncio.sleep(1)


async def start_surviving(client: Client, wf: str, inp: Any, wid: str, result_type: type) -> WorkflowHandle:
    for attempt in range(60):
        try:
            return await client.start_workflow(wf, inp, id=wid, task_queue=TASK_QUEUE, result_type=result_type)
        except RPCError:
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


class Chaos:
    """The fault schedule of one run; `enabled=False` is the fault-free baseline."""

    def __init__(self, stack: ChaosStack, database: str, enabled: bool, kills: int, seed: int) -> None:
        self.stack, self.database, self.enabled = stack, database, enabled
        self.rng = random.Random(seed)
        self.kills_total = kills
        self.kills_done = 0
        self.postgres_restarted = False

    def quota(self, phase: str) -> int:
        if not self.enabled:
            return 0
        shares = {"a": KILL_SHARE["a"], "b": KILL_SHARE["a"] + KILL_SHARE["b"], "c": 1.0}
        return max(0, round(self.kills_total * shares[phase] + 0.499) - self.kills_done)

    async def drive(self, phase: str, handle: WorkflowHandle) -> Any:
        task = asyncio.ensure_future(result_surviving_restarts(handle))
        deadline = time.monotonic() + PHASE_LIMIT_SECONDS
        in_phase = 0
        # The dev server restarts once, half-way through (a)'s kills; Postgres at (c)'s first.
        temporal_at = max(1, self.quota(phase) // 2) if phase == "a" else -1
        while not task.done():
            if time.monotonic() > deadline:
                task.cancel()
                raise TimeoutError(f"phase {phase} did not finish within {PHASE_LIMIT_SECONDS}s")
            if self.quota(phase) <= 0:
                await asyncio.wait({task}, timeout=1)
                continue
            done, _ = await asyncio.wait({task}, timeout=self.rng.uniform(1.0, 7.0))
            if done:
                break
            self.stack.kill_worker(phase)
            self.kills_done += 1
            in_phase += 1
            extra = ""
            if in_phase == temporal_at and self.stack.faults.temporal_restarts == 0:
                await asyncio.to_thread(self.stack.restart_temporal)
                extra = " + Temporal dev server restarted"
            say(f"  kill {self.kills_done} ({phase}){extra}")
            await asyncio.to_thread(self.stack.start_worker)
            if task.done():
                continue
            if phase == "c" and not self.postgres_restarted:
                # Under a live worker, while it works: its pool loses every connection at once.
                await asyncio.sleep(self.rng.uniform(1.0, 3.0))
                await asyncio.to_thread(self.stack.restart_postgres)
                self.postgres_restarted = True
                say("  Postgres restarted (pg_ctl restart -m fast) under the running worker")
            elif self.kills_done % 2 == 0:
                await asyncio.sleep(self.rng.uniform(0.5, 3.0))
                n = await self.stack.terminate_backends(self.database)
                say(f"  pg_terminate_backend: {n} connection(s) of the worker dropped")
        return task.result()


async def run_once(stack: ChaosStack, name: str, *, chaos: bool, seed: int, sizes: scenario.Sizes,
                   kills: int, page_size: int) -> dict[str, Any]:
    say(f"== {name} run ({'with faults' if chaos else 'fault-free'})")
    started = time.monotonic()
    namespace = f"chaos-{name}-{uuid.uuid4().hex[:6]}"
    database = f"chaos_{name}"
    db_url = await stack.create_database(database)
    client = await register_namespace(stack.temporal_address, namespace)
    admin = EmulatorAdmin(stack.stripe_api_base)
    await admin.reset(reset_config=True, config={"rate_limit": 0, "faults": [], "seed": seed})
    sc = stripe.StripeClient("sk_test_chaos", base_addresses={"api": stack.stripe_api_base,
                                                              "meter_events": stack.stripe_api_base},
                             max_network_retries=2)
    pool = await create_pool(db_url, min_size=1, max_size=4)
    faults_on = {"rate_limit": STRIPE_RATE_LIMIT, "faults": FAULTS if chaos else [], "seed": seed}
    faults_off = {"rate_limit": 0, "faults": []}
    injected: dict[str, int] = {}

    async def faults(on: bool) -> None:
        if not on:
            for f in (await admin.get_config())["faults"]:
                k = f"{f['status'] or 'latency'}{' after write' if f.get('after') else ''}"
                injected[k] = injected.get(k, 0) + f.get("injected", 0)
        await admin.configure(**(faults_on if on else faults_off))

    stack.worker_env = {
        "DATABASE_URL": db_url, "STRIPE_API_BASE": stack.stripe_api_base, "STRIPE_API_KEY": "sk_test_chaos",
        "TEMPORAL_ADDRESS": stack.temporal_address, "TEMPORAL_NAMESPACE": namespace,
        "BILLING_TASK_QUEUE": TASK_QUEUE, "STRIPE_RATE_LIMIT": str(STRIPE_RATE_LIMIT),
        "RECON_PAGE_SIZE": str(page_size), "RECON_SETTLE_SECONDS": "2", "STRIPE_WEBHOOK_SECRET": "whsec_chaos",
        "RECON_AUTO_APPROVE_OVER_REPORTING": "true", "LOG_LEVEL": "WARNING", "METRICS_BIND_ADDRESS": "",
        "PYTHONUNBUFFERED": "1",
    }
    log_offset = stack.worker_log.stat().st_size if stack.worker_log.exists() else 0
    driver = Chaos(stack, database, chaos, kills, seed)
    results: dict[str, Any] = {}
    try:
        customers = await scenario.seed_usage(pool, sc, admin, seed, sizes)
        prices = await scenario.create_prices(sc)
        act = scenario.Activity()
        await asyncio.to_thread(stack.start_worker)
        d = scenario.today()

        # (a) a large apply reconciliation
        await faults(True)
        say(f"(a) ReconcileUsage apply: {len(customers)} customers x 2 meters x 3 days")
        h = await start_surviving(client, "ReconcileUsage", ReconcileUsageInput(
            start_date=d - timedelta(days=3), end_date=d - timedelta(days=1), mode=Mode.APPLY, settle_seconds=2,
            auto_approve_over_reporting=True, actor="chaos"), "chaos-reconcile", ReconcileResult)
        r: Any = await driver.drive("a", h)
        results["a"] = {"status": r.status.value, "counts": r.counts.model_dump(),
                        "verify": r.verify_counts.model_dump() if r.verify_counts else None}
        await faults(False)

        # (b) webhook outage (no endpoint receives anything), then ReplayWebhooks apply
        await scenario.stripe_activity(sc, admin, act, first=0, count=sizes.webhook_customers, prices=prices)
        await faults(True)
        say(f"(b) ReplayWebhooks apply after an outage ({sizes.webhook_customers} customers' activity)")
        h = await start_surviving(client, "ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY, days=1, actor="chaos"),
                                  "chaos-replay", ReplayResult)
        rr: Any = await driver.drive("b", h)
        results["b"] = rr.counts.model_dump()
        await faults(False)

        # (c) late usage and more Stripe activity during a second outage, then a backfill
        late = await scenario.late_usage(pool, customers, seed)
        await scenario.second_batch(sc, act, max(2, sizes.webhook_customers // 2))
        await faults(True)
        say(f"(c) CatchUpBackfill apply over 5 days ({late} late usage events)")
        h = await start_surviving(client, "CatchUpBackfill", CatchUpBackfillInput(
            start_date=d - timedelta(days=4), end_date=d, mode=Mode.APPLY, max_concurrent_days=2, settle_seconds=2,
            auto_approve_over_reporting=True, actor="chaos"), "chaos-backfill", BackfillResult)
        rb: Any = await driver.drive("c", h)
        results["c"] = {"days": [x.outcome.value for x in rb.days], "counts": rb.counts.model_dump(),
                        "replay": (rb.replay or {}).get("counts"), "resync": (rb.resync or {}).get("counts")}
        await faults(False)
    except WorkflowFailureError as e:
        results["failed"] = f"{e}: {e.cause}"
        await faults(False)
    finally:
        stack.stop_worker()

    final = await state.capture(pool, admin)
    once = await state.exactly_once(pool, admin)
    webhooks = await state.webhook_tables_vs_stripe(pool, sc, act)
    await pool.close()
    await admin.aclose()
    log = stack.worker_log.read_bytes()[log_offset:].decode(errors="replace")
    return {
        "name": name, "seconds": round(time.monotonic() - started, 1), "results": results, "state": final,
        "exactly_once": once, "webhooks_vs_stripe": webhooks, "faults_injected": injected,
        "worker_log": {
            "activity_attempts_failed": log.count("Completing activity as failed"),
            "failure_causes": failure_causes(log),
            "rate_limit_errors_surfaced": log.count("RateLimitError"),
            "workflow_task_failures": log.count("Failed activation on workflow"),
        },
        "kills": driver.kills_done,
    }


def failure_causes(log: str) -> dict[str, int]:
    """The exception that ended each failed activity attempt, by class (from the tracebacks)."""
    causes: dict[str, int] = {}
    for block in log.split("Completing activity as failed")[1:]:
        found = re.findall(r"^[\s|]*([A-Za-z_][\w.]*(?:Error|Exception|Timeout\w*|Shutdown\w*)): ", block, re.M)
        names = [n for n in found if n != "ExceptionGroup"]
        key = names[-1] if names else "unknown"
        causes[key] = causes.get(key, 0) + 1
    return causes


async def main(*, kills: int, size: str, seed: int, page_size: int, state_dir: Path | None,
               keep: bool) -> dict[str, Any]:
    sizes = scenario.Sizes.named(size)
    folder = state_dir or Path(tempfile.mkdtemp(prefix="billing-chaos-"))
    stack = ChaosStack(folder)
    say(f"stack in {folder}")
    stack.up()
    try:
        base = await run_once(stack, "baseline", chaos=False, seed=seed, sizes=sizes, kills=0, page_size=page_size)
        stack.faults = type(stack.faults)()
        chaos = await run_once(stack, "faults", chaos=True, seed=seed, sizes=sizes, kills=kills, page_size=page_size)
    finally:
        stack.down()
        if not keep and state_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    differences = state.diff(base["state"], chaos["state"])
    once = chaos["exactly_once"]
    wh = chaos["webhooks_vs_stripe"]
    duplicates = (once["duplicate_identifiers"] + once["keys_over_reported"] + wh["double_grants"])
    missing = (once["keys_under_reported"] + once["outbox_landed_missing_in_stripe"] + once["outbox_planned_left"]
               + sum(wh["mismatched"].values()) + wh["missing_grants"])
    faults = stack.faults
    summary = {
        "seed": seed, "size": size, "customers": sizes.customers, "webhook_customers": sizes.webhook_customers,
        "kills_survived": len(faults.kills),
        "kills_by_phase": {p: sum(1 for k in faults.kills if k["phase"] == p) for p in "abc"},
        "temporal_restarts": faults.temporal_restarts, "postgres_restarts": faults.postgres_restarts,
        "pg_terminate_rounds": faults.terminate_rounds, "pg_connections_terminated": faults.backends_terminated,
        "stripe_faults_injected": chaos["faults_injected"],
        "activity_attempts_failed_and_retried": chaos["worker_log"]["activity_attempts_failed"],
        "activity_failure_causes": chaos["worker_log"]["failure_causes"],
        "rate_limit_errors_surfaced": chaos["worker_log"]["rate_limit_errors_surfaced"],
        "runs_completed": {"baseline": "failed" not in base["results"], "chaos": "failed" not in chaos["results"]},
        "writes_checked": {
            "stripe_meter_events": once["meter_events_accepted"], "outbox_rows": once["outbox_rows"],
            "usage_keys": once["keys_checked"], "webhook_objects": wh["objects_compared"],
        },
        "duplicates_found": duplicates,
        "missing_writes": missing,
        "exactly_once_detail": {k: v for k, v in once.items() if k != "examples"},
        "webhooks_vs_stripe": wh,
        "equal_to_fault_free_run": not differences,
        "differences": differences,
        "seconds": {"baseline": base["seconds"], "chaos": chaos["seconds"]},
        "results": {"baseline": base["results"], "chaos": chaos["results"]},
    }
    if once["examples"]["over"] or once["examples"]["under"] or once["examples"]["dup"]:
        summary["examples"] = once["examples"]
    return summary


def dump(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False, default=str)


__all__ = ["asdict", "dump", "main"]
