"""The Stripe circuit breaker on the real stack (a `python -m worker` process, Postgres, the
emulator, a local sink for notifications), with its settings scaled down: a 10 s window, 5
errors, 8 s open before a probe.

The emulator answers every API request 500. A run keeps trying; its errors open the circuit:
auto-healing is paused (actor circuit-breaker, the figures in the reason) and a notification
goes out. The first probe, while Stripe still fails, keeps it open (no second notification).
Stripe recovers: a run started now detects every drift and writes nothing (observe-only). The
next probe succeeds: the circuit closes, resumes its own pause, says so; the corrections then
complete (the run that waited out the outage, or the next one), each meter event exactly once."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import pytest

from circuit.types import CIRCUIT_ACTOR
from common.types import Mode, RunStatus
from reconcile.types import ReconcileResult

from .autoheal_helpers import global_switch
from .notify_helpers import dumps, running_sink, stop_singletons, worker_env
from .recon_helpers import assert_stripe_equals_ledger, seed_world, start
from .worker_helpers import spawn_worker, stop_worker

pytestmark = pytest.mark.integration

OPEN_SECONDS = 8
# How long Stripe keeps failing after the circuit opened: the first probe (after OPEN_SECONDS)
# still fails. CIRCUIT_TEST_FAULT_SECONDS=60 runs the "a minute of 500s" (slower).
FAULTS_AFTER_OPEN = float(os.environ.get("CIRCUIT_TEST_FAULT_SECONDS", "10"))
CIRCUIT = {"STRIPE_CIRCUIT_WINDOW_SECONDS": "10", "STRIPE_CIRCUIT_MIN_ERRORS": "5",
           "STRIPE_CIRCUIT_ERROR_RATE": "0.5", "STRIPE_CIRCUIT_OPEN_SECONDS": str(OPEN_SECONDS),
           "STRIPE_CIRCUIT_CHECK_SECONDS": "0.5", "STRIPE_CIRCUIT_FLUSH_SECONDS": "0.5"}


async def _until(pool, sql: str, limit: float, *args):
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        row = await pool.fetchrow(sql, *args)
        if row is not None:
            return row
        assert asyncio.get_running_loop().time() < deadline, f"never: {sql}"
        await asyncio.sleep(0.2)


async def test_stripe_failing_opens_the_circuit_pauses_writes_then_closes_and_corrects_once(
    clean_db, stripe_client, emulator, emulator_admin, temporal_env, task_queue, postgres_dsn, tmp_path,
):
    world = await seed_world(clean_db, stripe_client, n_customers=3, events_per_key=1,
                             meters={"api_requests": "API requests"})
    n_keys = len(world.customers) * len(world.days)
    client = temporal_env.client
    log = tmp_path / "worker.log"
    worker = None
    # global_switch: the circuit's pause starts AutoHealControl (one global id) on this test's
    # task queue; it must not outlive the test, or the next test's switch talks to a dead queue.
    async with global_switch(client, clean_db), running_sink() as (sink, url):
        env = worker_env(postgres_dsn, emulator, temporal_env, task_queue, NOTIFY_WEBHOOK_URL=url, **CIRCUIT)
        try:
            worker = spawn_worker(env, log)
            await emulator_admin.configure(faults=[{"path_prefix": "/v1/", "status": 500}])
            during = await start(client, task_queue, world.request(mode=Mode.APPLY), f"circuit-during-{world.tag}")

            # Opens: the existing pause, by the circuit, with the figures.
            paused = await _until(clean_db, "SELECT actor, reason FROM billing.autoheal_state "
                                            "WHERE paused AND actor = $1", 60, CIRCUIT_ACTOR)
            assert "errors in" in paused["reason"] and "threshold 5 errors" in paused["reason"], paused
            opened = await sink.wait_for("circuit_opened", 30)
            assert opened["severity"] == "critical" and "errors in" in opened["text"]
            assert await clean_db.fetchval("SELECT state FROM billing.stripe_circuit") == "open"

            # The first probe fails (Stripe still answers 500): open again, same episode.
            await _until(clean_db, "SELECT 1 FROM billing.stripe_circuit WHERE reason LIKE '%probe failed%'",
                         OPEN_SECONDS + 20)
            await asyncio.sleep(max(0.0, FAULTS_AFTER_OPEN - OPEN_SECONDS))
            # Stripe recovers right after a failed probe: OPEN_SECONDS before the next one.
            reopened = await clean_db.fetchval("SELECT since FROM billing.stripe_circuit")
            await _until(clean_db, "SELECT 1 FROM billing.stripe_circuit WHERE state = 'open' AND since > $1",
                         OPEN_SECONDS + 20, reopened)
            await emulator_admin.configure(faults=[])

            # Stripe is back but the circuit is still open: detection goes on, writes do not.
            assert await clean_db.fetchval("SELECT state FROM billing.stripe_circuit") == "open"
            observer = await start(client, task_queue, world.request(mode=Mode.APPLY), f"circuit-observe-{world.tag}")
            observed: ReconcileResult = await asyncio.wait_for(observer.result(), 60)
            assert observed.status == RunStatus.COMPLETED and observed.observe_only, observed
            assert observed.counts.drift_count >= n_keys and observed.counts.corrections_pushed == 0, observed.counts
            assert await clean_db.fetchval(
                "SELECT count(*) FROM billing.discrepancies WHERE run_id = $1", f"circuit-observe-{world.tag}") >= n_keys
            assert await emulator_admin.meter_events() == []
            assert await clean_db.fetchval("SELECT state FROM billing.stripe_circuit") == "open", \
                "the circuit closed before the observe-only run ended: raise OPEN_SECONDS"

            # The next probe succeeds: closed, its own pause resumed, and said so.
            await _until(clean_db, "SELECT 1 FROM billing.stripe_circuit WHERE state = 'closed'", OPEN_SECONDS + 20)
            await _until(clean_db, "SELECT 1 FROM billing.autoheal_state WHERE NOT paused", 30)
            closed = await sink.wait_for("circuit_closed", 30)
            assert closed["resolves"] == opened["id"]

            # The corrections complete. The run that waited out the outage corrects if it got
            # going after the close; if it got going while paused, it ended observe-only and the
            # next run (the schedule's) corrects. Either way: once.
            first: ReconcileResult = await asyncio.wait_for(during.result(), 120)
            assert first.status == RunStatus.COMPLETED, first
            after = await start(client, task_queue, world.request(mode=Mode.APPLY), f"circuit-after-{world.tag}")
            second: ReconcileResult = await asyncio.wait_for(after.result(), 60)
            assert second.status == RunStatus.COMPLETED and not second.observe_only, second
        finally:
            if worker is not None:
                stop_worker(worker)
            await stop_singletons(client, task_queue)
            await emulator_admin.configure(faults=[])

    events = await emulator_admin.meter_events()
    ids = Counter(e["identifier"] for e in events)
    assert len(events) == len(ids) == n_keys, (len(events), n_keys, {i: n for i, n in ids.items() if n > 1})
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    assert first.counts.corrections_pushed + second.counts.corrections_pushed == n_keys, (first.counts, second.counts)

    # One notification each way (after dedupe), and the pause and resume audited by the circuit.
    kinds = Counter(bodies[0]["kind"] for bodies in sink.by_key().values())
    assert kinds["circuit_opened"] == kinds["circuit_closed"] == 1, dumps(sink.by_key())
    assert set(kinds) <= {"circuit_opened", "circuit_closed", "drift_beyond_epsilon"}, kinds
    audit = await clean_db.fetch("SELECT action, actor FROM billing.audit_log WHERE entity_type = 'autoheal' ORDER BY at")
    assert [(r["action"], r["actor"]) for r in audit] == [("autoheal.pause", CIRCUIT_ACTOR),
                                                          ("autoheal.resume", CIRCUIT_ACTOR)]
