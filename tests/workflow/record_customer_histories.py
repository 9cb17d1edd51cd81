"""Record tests/histories/inspect_customer.json and repair_customer_*.json: InspectCustomer and
RepairCustomer (dry-run; apply, with its four child runs) through the real worker on the dev
server, with an embedded Postgres and the Stripe emulator.

    .venv/bin/pytest tests/workflow/record_customer_histories.py

Not collected by a plain `pytest` run (the file name does not match test_*.py).
tests/workflow/test_replay.py replays every file. A history that exists is kept (it is what
runs started by an older build look like): RECORD_OVERWRITE=1 records it again."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from temporalio.client import WorkflowHandle

import worker as worker_module
from common.types import Mode
from customer.inspect_workflow import InspectCustomer
from customer.repair_workflow import RepairCustomer
from customer.types import InspectCustomerInput, RepairCustomerInput
from tests.workflow.record_histories import HISTORIES, seed, settings_for


async def _save(handle: WorkflowHandle, name: str) -> Path:
    path = HISTORIES / f"{name}.json"
    if path.exists() and os.environ.get("RECORD_OVERWRITE") != "1":
        return path
    path.write_text((await handle.fetch_history()).to_json())
    return path


async def test_record_customer_histories(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    client = temporal_env.client
    tag = f"rec{uuid.uuid4().hex[:6]}"
    customer = (await seed(postgres_dsn, stripe_client, tag, customers=1))[0]  # usage never pushed to Stripe
    await clean_db.execute("UPDATE billing.customers SET name = customer_id")  # as the Stripe customer's
    w, close = await worker_module.build_worker(client, settings_for(postgres_dsn, emulator), task_queue=task_queue)
    try:
        async with w:
            handle = await client.start_workflow(InspectCustomer.run, InspectCustomerInput(customer=customer),
                                                 id=f"{tag}-inspect", task_queue=task_queue)
            view = await asyncio.wait_for(handle.result(), 60)
            assert [m.field for m in view.mismatches] == ["stripe"] * 3, view.mismatches
            print(f"wrote {await _save(handle, 'inspect_customer')}")
            for mode in (Mode.DRY_RUN, Mode.APPLY):
                handle = await client.start_workflow(
                    RepairCustomer.run, RepairCustomerInput(customer=customer, mode=mode, actor="recorder"),
                    id=f"{tag}-repair-{mode.value}", task_queue=task_queue)
                result = await asyncio.wait_for(handle.result(), 120)
                assert len(result.before) == 3 and len(result.after) == (0 if mode == Mode.APPLY else 3), result
                name = "repair_customer_" + mode.value.replace("-", "_")
                print(f"wrote {await _save(handle, name)}")
    finally:
        await close()
