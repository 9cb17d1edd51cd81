"""Notifications on the real stack (a `python -m worker` process, Postgres, the emulator, a local
HTTP sink as the JSON webhook target): a failed run, a plan awaiting approval and an apply run
with drift beyond epsilon each deliver exactly one notification, also when the worker is
killed between sending one and recording it (the sink holds its answer to the first delivery;
the worker dies waiting for it)."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowFailureError

from common.types import Mode
from reconcile.types import Phase

from .notify_helpers import dumps, outbox, running_sink, stop_singletons, worker_env
from .recon_helpers import seed_world, start, wait_phase
from .worker_helpers import spawn_worker, stop_worker

pytestmark = pytest.mark.integration

HOLD_SECONDS = 30.0  # the sink's answer to the first delivery: the worker is killed before it


async def _wait_all_sent(pool, n: int, limit: float) -> list[dict]:
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        rows = await outbox(pool)
        if len(rows) >= n and all(r["status"] == "sent" for r in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, dumps(rows)
        await asyncio.sleep(0.3)


async def test_each_run_notifies_exactly_once_across_a_worker_kill_between_send_and_record(
    clean_db, stripe_client, emulator, emulator_admin, temporal_env, task_queue, postgres_dsn, tmp_path,
):
    world = await seed_world(clean_db, stripe_client, n_customers=3, events_per_key=1,
                             meters={"api_requests": "API requests"})
    failing, planned, applied = world.customer_ids
    client = temporal_env.client
    log = tmp_path / "worker.log"
    workers = []
    async with running_sink(hold_first_seconds=HOLD_SECONDS) as (sink, url):
        env = worker_env(postgres_dsn, emulator, temporal_env, task_queue, NOTIFY_WEBHOOK_URL=url,
                         STRIPE_CIRCUIT_ENABLED="false")
        try:
            workers.append(spawn_worker(env, log))
            # 1. A run that fails: Stripe refuses the key on the meter summaries (non-retryable).
            await emulator_admin.configure(faults=[{"method": "GET", "path_prefix": "/v1/billing/meters/mtr_",
                                                    "status": 401}])
            failed = await start(client, task_queue, world.request(mode=Mode.APPLY, customers=[failing]),
                                 f"notify-failed-{world.tag}")
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(failed.result(), 60)
            await emulator_admin.configure(faults=[])

            # Its notification reaches the sink, which holds its answer: kill the worker now,
            # between the send and its record.
            await asyncio.wait_for(sink.first_received.wait(), 30)
            workers[0].kill()
            workers[0].wait(10)
            [row] = await outbox(clean_db)
            assert row["kind"] == "run_failed" and row["status"] == "pending" and row["delivered"] == {}, row
            workers.append(spawn_worker(env, log))

            # 2. A plan waiting for approval; 3. an apply run whose drift is beyond epsilon.
            plan = await start(client, task_queue, world.request(mode=Mode.PLAN, customers=[planned]),
                               f"notify-plan-{world.tag}")
            await wait_phase(plan, Phase.AWAITING_APPROVAL, limit=60)
            applied_run = await start(client, task_queue, world.request(mode=Mode.APPLY, customers=[applied]),
                                      f"notify-apply-{world.tag}")
            await asyncio.wait_for(applied_run.result(), 60)

            rows = await _wait_all_sent(clean_db, 3, limit=90)
            await plan.terminate("test done")
        finally:
            for w in workers:
                stop_worker(w)
            await stop_singletons(client, task_queue)
        log_tail = log.read_text()[-3000:]

    subjects = {r["kind"]: r["subject"] for r in rows}
    assert set(subjects) == {"run_failed", "plan_awaiting_approval", "drift_beyond_epsilon"}, (rows, log_tail)
    assert subjects["run_failed"].startswith(f"notify-failed-{world.tag}@")
    assert subjects["plan_awaiting_approval"].startswith(f"notify-plan-{world.tag}@")
    assert subjects["drift_beyond_epsilon"].startswith(f"notify-apply-{world.tag}@")
    # After the receiver's dedupe on Idempotency-Key: exactly one notification per (run, kind)...
    assert sink.kinds() == {(s, k): 1 for k, s in subjects.items()}, dumps(sink.by_key())
    # ...though the one in flight at the kill was delivered twice, under the same key and body.
    by_key = sink.by_key()
    resent = [bodies for bodies in by_key.values() if len(bodies) > 1]
    assert len(resent) == 1 and resent[0][0]["kind"] == "run_failed", dumps(by_key)
    assert resent[0][0] == resent[0][1]
    assert {r["kind"]: r["attempts"] for r in rows}["run_failed"] >= 2

    bodies = {bodies[0]["kind"]: bodies[0] for bodies in by_key.values()}
    plan_id = f"notify-plan-{world.tag}"
    assert any(c.startswith(f"billing-recon approve {plan_id} --actor") for c in bodies["plan_awaiting_approval"]["commands"])
    assert any(c.startswith(f"billing-recon reject {plan_id} --actor") for c in bodies["plan_awaiting_approval"]["commands"])
    assert "StripeAuthentication" in bodies["run_failed"]["text"] or "API key" in bodies["run_failed"]["text"]
    top = bodies["drift_beyond_epsilon"]["fields"]
    assert top and all(k.startswith(f"{applied} api_requests") for k in top), top
    assert len(top) == len(world.days)
