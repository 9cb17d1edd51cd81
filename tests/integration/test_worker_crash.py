"""A worker killed (SIGKILL, a real process) in the middle of an apply: the run still completes
on a new worker, Stripe ends up with every correction exactly once, and the run reports every
push it made (counted from the outbox and the audit log, not from the attempt that died).

The worker runs as `python -m worker`, configured only through its environment, with a small
client-side rate limit so that the apply of a few hundred keys takes several seconds. We kill it
once the emulator has accepted some but not all meter events, start a new one, and wait: the page
activity's heartbeat timeout (30 s) hands the page to the new worker, which sends `planned` outbox
rows again under their own identifiers and re-plans the rest from the same state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from common.types import Mode, RunStatus
from reconcile.types import ReconcileResult

from .recon_helpers import assert_stripe_equals_ledger, ledger_by_key, seed_world, start
from .worker_helpers import spawn_worker, stop_worker

pytestmark = pytest.mark.integration

N_CUSTOMERS = 60  # x 1 meter x 3 days = 180 keys to push, in pages of 20 customers
RATE_LIMIT = 15


async def test_worker_killed_mid_apply_pushes_every_correction_exactly_once(
    clean_db, stripe_client, emulator, emulator_admin, temporal_env, task_queue, postgres_dsn, tmp_path,
):
    world = await seed_world(clean_db, stripe_client, n_customers=N_CUSTOMERS, events_per_key=1,
                             meters={"api_requests": "API requests"}, with_counters=False)
    n_keys = len(world.customers) * len(world.meters) * len(world.days)
    env = {
        **os.environ,
        "DATABASE_URL": postgres_dsn,
        "STRIPE_API_BASE": emulator,
        "TEMPORAL_ADDRESS": temporal_env.address,
        "TEMPORAL_NAMESPACE": temporal_env.namespace,
        "BILLING_TASK_QUEUE": task_queue,
        "STRIPE_RATE_LIMIT": str(RATE_LIMIT),
        "RECON_PAGE_SIZE": "20",
        "RECON_SETTLE_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "worker.log"
    first = spawn_worker(env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        handle = await start(temporal_env.client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=2),
                             f"crash-{world.tag}")
        # Wait until Stripe has some, but not all, of the corrections.
        deadline = time.monotonic() + 40
        while True:
            accepted = len(await emulator_admin.meter_events())
            if accepted >= 10:
                break
            assert first.poll() is None, f"worker exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no meter event arrived:\n{log.read_text()[-3000:]}"
            await asyncio.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = len(await emulator_admin.meter_events())
        assert 0 < at_kill < n_keys, f"the kill did not land mid-apply ({at_kill}/{n_keys})"
        outbox_at_kill = dict(await clean_db.fetch(
            "SELECT status, count(*) FROM billing.stripe_usage_pushes GROUP BY status"))

        second = spawn_worker(env, log)
        result: ReconcileResult = await asyncio.wait_for(handle.result(), 80)
    finally:
        for p in (first, second):
            if p is not None:
                stop_worker(p)

    assert result.status == RunStatus.COMPLETED, result
    assert result.counts.reconcile_failures == 0

    # The emulator's own record: every accepted meter event, in order.
    events = await emulator_admin.meter_events()
    ids = Counter(e["identifier"] for e in events)
    dupes = {i: n for i, n in ids.items() if n > 1}
    assert not dupes, f"identifiers accepted twice: {dupes}"
    assert not [e for e in events if e["cancelled"]]
    # One correction per key, no more (nothing was re-planned under a second identifier)...
    assert len(events) == len(ids) == n_keys, (len(events), n_keys, outbox_at_kill)
    # ...and exactly what the outbox says was sent.
    outbox = await clean_db.fetch("SELECT identifier, status FROM billing.stripe_usage_pushes")
    sent = {r["identifier"] for r in outbox if r["status"] in ("sent", "confirmed")}
    assert {r["status"] for r in outbox} <= {"sent", "confirmed"}, Counter(r["status"] for r in outbox)
    assert sent == set(ids)

    # No missing correction: per key, the values Stripe accepted add up to the ledger...
    ledger = await ledger_by_key(clean_db, world)
    by_sid = {sid: cid for cid, sid in world.customers}
    pushed: dict[tuple, Decimal] = defaultdict(Decimal)
    for e in events:
        day = datetime.fromtimestamp(e["timestamp"], tz=UTC).date()
        pushed[(by_sid[e["payload"]["stripe_customer_id"]], e["event_name"], day)] += Decimal(
            str(e["payload"]["value"]))
    assert {k: v for k, v in ledger.items() if v} == dict(pushed)
    # ...and so do Stripe's daily summaries.
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)

    # The run's reported counts are its durable records, the killed attempt's pushes included
    # (its page tally died with it: they used to be missing from the counts, 5-6% after 3 kills).
    run_pushes = await clean_db.fetchval(
        "SELECT count(*) FROM billing.stripe_usage_pushes WHERE run_id = $1 AND sent_at IS NOT NULL", result.run_id)
    audited = await clean_db.fetchval(
        "SELECT count(*) FROM billing.audit_log WHERE workflow_id = $1 "
        "AND (action LIKE 'push_meter_event:%' OR action = 'usage.push_meter_event')",
        result.run_id)
    assert result.counts.corrections_pushed == run_pushes == audited == n_keys, (result.counts, run_pushes, audited)
    assert result.verify_counts is not None and result.verify_counts.corrections_pushed == 0
    counters_set = await clean_db.fetchval(
        "SELECT count(*) FROM billing.audit_log WHERE workflow_id = $1 "
        "AND action IN ('set_usage_counter', 'usage.set_counter')", result.run_id)
    periods = {d.replace(day=1) for d in world.days}
    assert result.counts.counter_repairs == counters_set == len(world.customers) * len(world.meters) * len(periods)
    assert result.counts.stripe_writes >= n_keys
    stored = await clean_db.fetchval("SELECT counts FROM billing.reconciliation_runs WHERE run_id = $1", result.run_id)
    assert stored["corrections_pushed"] == n_keys and stored["verify"]["corrections_pushed"] == 0
