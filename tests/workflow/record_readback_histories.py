"""Record tests/histories/rolling_readback_apply.json: one RollingReadBack slice through the real
worker on the dev server, with an embedded Postgres and the Stripe emulator (its ReconcileUsage
child over the slice's customers).

    .venv/bin/pytest tests/workflow/record_readback_histories.py

Not collected by a plain `pytest` run; tests/workflow/test_replay.py replays every file. A
history that exists is kept: RECORD_OVERWRITE=1 records it again."""

from __future__ import annotations

import asyncio
import os
import uuid

import worker as worker_module
from readback.types import ReadBackInput
from readback.workflow import RollingReadBack
from tests.workflow.record_histories import HISTORIES, seed, settings_for


async def test_record_readback_history(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    path = HISTORIES / "rolling_readback_apply.json"
    if path.exists() and os.environ.get("RECORD_OVERWRITE") != "1":
        return
    tag = f"rec{uuid.uuid4().hex[:6]}"
    await seed(postgres_dsn, stripe_client, tag, customers=4)
    client = temporal_env.client
    w, close = await worker_module.build_worker(client, settings_for(postgres_dsn, emulator), task_queue=task_queue)
    try:
        async with w:
            # A 4-minute cycle, a slice a minute: the first slice takes a quarter of the customers.
            handle = await client.start_workflow(
                RollingReadBack.run, ReadBackInput(actor="recorder", cycle_hours=4 / 60, every_minutes=1),
                id=f"{tag}-readback", task_queue=task_queue)
            result = await asyncio.wait_for(handle.result(), 120)
            assert result.due and result.customers >= 1 and result.status == "completed", result
            path.write_text((await handle.fetch_history()).to_json())
            print(f"wrote {path}")
    finally:
        await close()
