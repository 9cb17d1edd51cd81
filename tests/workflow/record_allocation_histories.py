"""Record tests/histories/reconcile_allocations_*.json: ReconcileAllocations through the real
worker on the dev server, with an embedded Postgres and the Stripe emulator.

    .venv/bin/pytest tests/workflow/record_allocation_histories.py

Not collected by a plain `pytest` run (the file name does not match test_*.py); kept apart from
record_histories.py so that job packages record their own. tests/workflow/test_replay.py
replays every file.

A history that exists is kept (it is what runs started by an older build look like, and
replaying it proves the patches): RECORD_OVERWRITE=1 records it again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowHandle

import worker as worker_module
from allocations.types import (
    ApprovalDecision,
    Phase,
    ReconcileAllocationsInput,
    RunOutcome,
)
from allocations.workflow import ReconcileAllocations
from common.types import Mode, PauseRequest
from tests.integration.allocation_helpers import slow_debits, wait_for_phase
from tests.workflow.record_histories import HISTORIES, settings_for

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DECISION = ApprovalDecision(actor="recorder", reason="recording")
PAUSE = PauseRequest(actor="recorder", reason="recording")


async def _seed(pool, tag: str) -> None:
    c = f"{tag}-c"
    await pool.execute("INSERT INTO billing.customers (customer_id) VALUES ($1)", c)
    await pool.execute(
        "INSERT INTO billing.allocation_rates (resource_class, effective_from, rate_minor, unit, meter) "
        "VALUES ('gpu', '2026-01-01Z', 6, 'minute', 'gpu_minutes') ON CONFLICT DO NOTHING")
    for i, (status, hours, released) in enumerate([("active", 30, None), ("released", 5, 2), ("released", 4, 1)]):
        a = f"{tag}-a{i}"
        rel = AS_OF - timedelta(hours=released) if released else None
        await pool.execute(
            "INSERT INTO billing.allocations (allocation_id, customer_id, resource_class, status, activated_at, "
            "released_at, status_changed_at) VALUES ($1, $2, 'gpu', $3, $4, $5::timestamptz, "
            "coalesce($5::timestamptz, $4))", a, c, status, AS_OF - timedelta(hours=hours), rel)
        if i == 1:  # orphan
            await pool.execute("INSERT INTO billing.duration_usage (usage_id, allocation_id, start_time) "
                               "VALUES ($1, $2, $3)", f"{a}-u", a, AS_OF - timedelta(hours=hours))
    await pool.execute(
        "INSERT INTO billing.payment_sessions (session_id, customer_id, amount_minor, status) "
        "VALUES ($1, $2, 900, 'completed')", f"{tag}-ps", c)


async def _save(handle: WorkflowHandle, name: str) -> Path:
    path = HISTORIES / f"{name}.json"
    if path.exists() and os.environ.get("RECORD_OVERWRITE") != "1":
        return path
    path.write_text((await handle.fetch_history()).to_json())
    return path


@contextlib.asynccontextmanager
async def _recording(temporal_env, postgres_dsn, pool, emulator, task_queue) -> AsyncIterator[tuple[Client, str]]:
    """The real worker on the dev server, and a seeded world: (client, tag)."""
    client = temporal_env.client
    w, close = await worker_module.build_worker(client, settings_for(postgres_dsn, emulator), task_queue=task_queue)
    tag = f"rec{uuid.uuid4().hex[:6]}"
    try:
        async with w:
            await _seed(pool, tag)
            yield client, tag
    finally:
        await close()


async def _plan(client: Client, task_queue: str, workflow_id: str) -> WorkflowHandle:
    """A plan run, awaiting approval."""
    inp = ReconcileAllocationsInput(mode=Mode.PLAN, as_of=AS_OF, page_size=2, actor="recorder")
    handle = await client.start_workflow(ReconcileAllocations.run, inp, id=workflow_id, task_queue=task_queue)
    await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
    return handle


async def test_record_allocation_histories(temporal_env, postgres_dsn, clean_db, emulator, task_queue):
    async with _recording(temporal_env, postgres_dsn, clean_db, emulator, task_queue) as (client, tag):
        # dry-run, page size 1: several pages in both phases.
        inp = ReconcileAllocationsInput(mode=Mode.DRY_RUN, as_of=AS_OF, page_size=1, actor="recorder")
        handle = await client.start_workflow(ReconcileAllocations.run, inp, id=f"{tag}-dry", task_queue=task_queue)
        res = await asyncio.wait_for(handle.result(), 60)
        assert res.counts.fixable > 0, res
        print(await _save(handle, "reconcile_allocations_dry_run"))
        # plan -> approve (an update) -> apply the plan.
        handle = await _plan(client, task_queue, f"{tag}-plan")
        await handle.execute_update(ReconcileAllocations.approve, DECISION)
        res = await asyncio.wait_for(handle.result(), 60)
        assert res.outcome == RunOutcome.COMPLETED and res.applied and res.applied.fixes_applied > 0, res
        print(await _save(handle, "reconcile_allocations_plan_approve"))


async def test_record_allocation_message_histories(temporal_env, postgres_dsn, clean_db, emulator, task_queue):
    """The run's messages: a plan rejected (the run waits for the handler), and an apply paused
    mid-page (its page cancelled and interrupted) and resumed."""
    async with _recording(temporal_env, postgres_dsn, clean_db, emulator, task_queue) as (client, tag):
        handle = await _plan(client, task_queue, f"{tag}-reject")
        await handle.execute_update(ReconcileAllocations.reject, DECISION)
        res = await asyncio.wait_for(handle.result(), 60)
        assert res.outcome == RunOutcome.REJECTED, res
        print(await _save(handle, "reconcile_allocations_plan_reject"))

        # Records that take a while to bill, so that the pause lands mid-page.
        for i in range(40):
            a = f"{tag}-slow{i:02d}"
            await clean_db.execute(
                "INSERT INTO billing.allocations (allocation_id, customer_id, resource_class, status, "
                "activated_at, released_at, status_changed_at) VALUES ($1, $2, 'gpu', 'released', $3, $4, $4)",
                a, f"{tag}-c", AS_OF - timedelta(days=5), AS_OF - timedelta(hours=1))
            await clean_db.execute(
                "INSERT INTO billing.duration_usage (usage_id, allocation_id, start_time, end_time) "
                "VALUES ($1, $2, $3, $4)", f"{a}-u", a, AS_OF - timedelta(days=5), AS_OF - timedelta(hours=1))
        async with slow_debits(clean_db, 0.02):
            inp = ReconcileAllocationsInput(mode=Mode.APPLY, as_of=AS_OF, page_size=30, actor="recorder")
            handle = await client.start_workflow(ReconcileAllocations.run, inp, id=f"{tag}-pause",
                                                 task_queue=task_queue)
            for _ in range(600):
                if await clean_db.fetchval("SELECT count(*) FROM billing.duration_ledger"):
                    break
                await asyncio.sleep(0.05)
            await handle.signal(ReconcileAllocations.pause, PAUSE)
            for _ in range(100):
                p = await handle.query(ReconcileAllocations.progress)
                if p is not None and p.paused:
                    break
                await asyncio.sleep(0.1)
            await handle.signal(ReconcileAllocations.resume, PAUSE)
            res = await asyncio.wait_for(handle.result(), 120)
        assert res.counts.fixes_applied > 0, res
        assert "ACTIVITY_TASK_CANCEL_REQUESTED" in (await handle.fetch_history()).to_json(), "no page was cancelled"
        print(await _save(handle, "reconcile_allocations_pause_resume"))
