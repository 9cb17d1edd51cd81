"""Record tests/histories/reconcile_usage_ui_*.json: ReconcileUsage runs that carry the Temporal
UI metadata (common/ui.py), through the real worker on the dev server (search attributes
registered by the session fixture), with an embedded Postgres and the Stripe emulator:

- `reconcile_usage_ui_plan_approve`: started by a client with the default interceptors (search
  attributes, summary, details), outcome upserted while it awaits approval and at the end;
- `reconcile_usage_ui_scheduled`: started by a schedule, with the dead-man's switch ping.

    .venv/bin/pytest tests/workflow/record_ui_histories.py

Not collected by a plain `pytest` run. A history that exists is kept (RECORD_OVERWRITE=1
records it again). tests/workflow/test_replay.py replays every file."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowHandle

import worker as worker_module
from billing.schedules import ScheduleDef
from common.client import connect
from common.types import Mode
from reconcile.types import ApprovalDecision, Phase, ReconcileUsageInput
from reconcile.workflow import ReconcileUsage
from tests.workflow.record_histories import HISTORIES, seed, settings_for, wait_phase


async def _save(handle: WorkflowHandle, name: str) -> Path:
    path = HISTORIES / f"{name}.json"
    if path.exists() and os.environ.get("RECORD_OVERWRITE") != "1":
        return path
    path.write_text((await handle.fetch_history()).to_json())
    return path


async def test_record_ui_histories(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    tag = f"rec{uuid.uuid4().hex[:6]}"
    ids = await seed(postgres_dsn, stripe_client, tag)
    today = datetime.now(UTC).date()
    settings = settings_for(postgres_dsn, emulator).model_copy(update={
        "deadman_ping_url": None, "deadman_ping_schedules": f"ui-sync-{tag}"})
    # The CLI's client: the default interceptors add the search attributes at start.
    client: Client = await connect(temporal_env.address)
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            inp = ReconcileUsageInput(mode=Mode.PLAN, settle_seconds=1, start_date=today - timedelta(days=2),
                                      end_date=today, customers=ids, actor="recorder")
            handle = await client.start_workflow(ReconcileUsage.run, inp, id=f"{tag}-ui-plan", task_queue=task_queue)
            await wait_phase(handle, Phase.AWAITING_APPROVAL)
            await handle.execute_update(ReconcileUsage.approve, ApprovalDecision(actor="recorder", reason="recording"))
            await asyncio.wait_for(handle.result(), 120)
            await _save(handle, "reconcile_usage_ui_plan_approve")

            d = ScheduleDef(name=f"ui-sync-{tag}", workflow="ReconcileUsage", note="recording", every="1d",
                            execution_timeout="10m",
                            input={"mode": "apply", "lookback_days": 1, "customers": ids, "settle_seconds": 1,
                                   "actor": "recorder", "approval_timeout_seconds": 60})
            schedule = await client.create_schedule(d.schedule_id, d.to_schedule(task_queue))
            try:
                await schedule.trigger()
                for _ in range(100):
                    actions = (await schedule.describe()).info.recent_actions
                    if actions:
                        break
                    await asyncio.sleep(0.1)
                handle = client.get_workflow_handle(actions[0].action.workflow_id)
                await asyncio.wait_for(handle.result(), 120)
                await _save(handle, "reconcile_usage_ui_scheduled")
            finally:
                await schedule.delete()
    finally:
        await close()
