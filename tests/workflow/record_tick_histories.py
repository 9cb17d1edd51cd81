"""Record tests/histories/usage_tick_apply.json: UsageTick through the real worker on the dev
server, with an embedded Postgres and the Stripe emulator (changed keys pushed over two pages).

    .venv/bin/pytest tests/workflow/record_tick_histories.py

Not collected by a plain `pytest` run; tests/workflow/test_replay.py replays every file. A
history that exists is kept: RECORD_OVERWRITE=1 records it again."""

from __future__ import annotations

import asyncio
import os
import uuid

import worker as worker_module
from reconcile.tick_types import UsageTickInput
from reconcile.tick_workflow import UsageTick
from tests.workflow.record_histories import HISTORIES, seed, settings_for


async def test_record_usage_tick_history(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    path = HISTORIES / "usage_tick_apply.json"
    if path.exists() and os.environ.get("RECORD_OVERWRITE") != "1":
        return
    tag = f"rec{uuid.uuid4().hex[:6]}"
    await seed(postgres_dsn, stripe_client, tag, customers=2)
    client = temporal_env.client
    w, close = await worker_module.build_worker(client, settings_for(postgres_dsn, emulator), task_queue=task_queue)
    try:
        async with w:
            handle = await client.start_workflow(
                UsageTick.run, UsageTickInput(actor="recorder", page_size=2, settle_seconds=3600),
                id=f"{tag}-usage-tick", task_queue=task_queue)
            result = await asyncio.wait_for(handle.result(), 120)
            assert result.pages >= 2 and result.counts.pushed > 0, result
            path.write_text((await handle.fetch_history()).to_json())
            print(f"wrote {path}")
    finally:
        await close()
