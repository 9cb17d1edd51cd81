"""Record tests/histories/{notification_dispatcher,stripe_circuit,autoheal_control_circuit}.json:
NotificationDispatcher, StripeCircuit and AutoHealControl's conditional resume through the real
worker on the dev server, with an embedded Postgres and the Stripe emulator.

    .venv/bin/pytest tests/workflow/record_alert_histories.py

Not collected by a plain `pytest` run (the file name does not match test_*.py).
tests/workflow/test_replay.py replays every file. A history that exists is kept (it is what runs
started by an older build look like): RECORD_OVERWRITE=1 records it again."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client, WorkflowHandle

import worker as worker_module
from autoheal.control import signal_autoheal
from autoheal.types import AutohealView
from circuit import control as circuit_control
from circuit.types import CIRCUIT_ACTOR, circuit_id
from common.types import PauseRequest
from notify import control as notify_control
from notify.outbox import emit
from notify.types import Notification, NotificationKind, WakeRequest, dispatcher_id
from tests.integration.autoheal_helpers import global_switch
from tests.integration.notify_helpers import running_sink
from tests.workflow.record_histories import HISTORIES, settings_for


async def _save(handle: WorkflowHandle, name: str) -> Path:
    path = HISTORIES / f"{name}.json"
    if path.exists() and os.environ.get("RECORD_OVERWRITE") != "1":
        return path
    path.write_text((await handle.fetch_history()).to_json())
    return path


async def _until(pool, sql: str, *args, limit: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while await pool.fetchval(sql, *args) is None:
        assert asyncio.get_running_loop().time() < deadline, f"never: {sql}"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _worker(temporal_env, postgres_dsn, emulator, task_queue, **extra) -> AsyncIterator[Client]:
    settings = settings_for(postgres_dsn, emulator).model_copy(update={"task_queue": task_queue, **extra})
    w, close = await worker_module.build_worker(temporal_env.client, settings, task_queue=task_queue)
    try:
        async with w:
            yield temporal_env.client
    finally:
        await close()


async def test_record_notification_dispatcher(temporal_env, postgres_dsn, clean_db, emulator, task_queue):
    async with running_sink() as (sink, url), \
            _worker(temporal_env, postgres_dsn, emulator, task_queue, notify_webhook_url=url,
                    notify_poll_seconds=0.3) as client:
        await notify_control.ensure_running(client, task_queue)
        await emit(clean_db, Notification(kind=NotificationKind.DAILY_CHECK_FAILED, subject="recording",
                                          title="recording"))
        handle = client.get_workflow_handle(dispatcher_id(task_queue))
        await handle.signal("wake", WakeRequest(reason="recording"))
        await _until(clean_db, "SELECT 1 FROM billing.notifications WHERE status = 'sent'")
        assert len(sink.deliveries) == 1
        await asyncio.sleep(1)  # a few empty rounds (timers) too
        await handle.terminate("recorded")  # it runs forever by design
        print(await _save(handle, "notification_dispatcher"))


async def test_record_stripe_circuit(temporal_env, postgres_dsn, clean_db, emulator, emulator_admin, task_queue):
    """Open (figures past the threshold), a failed probe, a good probe: closed, resumed."""
    async with global_switch(temporal_env.client, clean_db), \
            _worker(temporal_env, postgres_dsn, emulator, task_queue, stripe_circuit_min_errors=3,
                    stripe_circuit_open_seconds=1, stripe_circuit_check_seconds=0.5) as client:
        await clean_db.execute(
            "INSERT INTO billing.stripe_circuit (id) VALUES (true) ON CONFLICT (id) DO UPDATE SET state = 'closed'")
        await emulator_admin.configure(faults=[{"path_prefix": "/v1/", "status": 500}])
        await clean_db.execute(
            "INSERT INTO billing.stripe_call_tally (worker, bucket, requests, errors, by_reason) "
            "VALUES ('recorder', now(), 5, 5, '{\"5xx\": 5}')")
        await circuit_control.ensure_running(client, task_queue)
        await _until(clean_db, "SELECT 1 FROM billing.stripe_circuit WHERE reason LIKE '%probe failed%'")
        await emulator_admin.configure(faults=[])
        await _until(clean_db, "SELECT 1 FROM billing.stripe_circuit WHERE state = 'closed'")
        await _until(clean_db, "SELECT 1 FROM billing.autoheal_state WHERE NOT paused AND actor = $1", CIRCUIT_ACTOR)
        handle = client.get_workflow_handle(circuit_id(task_queue))
        await asyncio.sleep(1)
        await handle.terminate("recorded")
        print(await _save(handle, "stripe_circuit"))


async def test_record_autoheal_conditional_resume(temporal_env, postgres_dsn, clean_db, emulator, task_queue):
    """The circuit's pause taken over by an operator, the circuit's conditional resume skipped."""
    async with global_switch(temporal_env.client, clean_db), \
            _worker(temporal_env, postgres_dsn, emulator, task_queue) as client:
        steps = [(True, PauseRequest(actor=CIRCUIT_ACTOR, reason="figures"), (True, CIRCUIT_ACTOR)),
                 (True, PauseRequest(actor="alice", reason="incident"), (True, "alice")),
                 (False, PauseRequest(actor=CIRCUIT_ACTOR, only_if_paused_by=CIRCUIT_ACTOR), (True, "alice")),
                 (False, PauseRequest(actor="alice", reason="over"), (False, "alice"))]
        for paused, req, want in steps:
            handle = await signal_autoheal(client, task_queue, paused, req)
            for _ in range(100):
                s = await handle.query("state", result_type=AutohealView)
                if (s.paused, s.actor) == want:
                    break
                await asyncio.sleep(0.1)
            assert (s.paused, s.actor) == want, (req, s)
        await handle.terminate("recorded")
        print(await _save(handle, "autoheal_control_circuit"))
