"""Record tests/histories/daily_checks.json: DailyChecks through the real worker on the dev
server, with an embedded Postgres and the Stripe emulator (a stale counter, so one check fails).

    .venv/bin/pytest tests/workflow/record_check_histories.py

Not collected by a plain `pytest` run (the file name does not match test_*.py); kept apart from
record_histories.py so that job packages record their own. tests/workflow/test_replay.py
replays every file. A history that exists is kept: RECORD_OVERWRITE=1 records it again."""

from __future__ import annotations

import asyncio
import os
import uuid

import worker as worker_module
from checks.types import CheckName, DailyChecksInput
from checks.workflow import DailyChecks
from tests.workflow.record_histories import HISTORIES, seed, settings_for


async def test_record_daily_checks_history(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    path = HISTORIES / "daily_checks.json"
    if path.exists() and os.environ.get("RECORD_OVERWRITE") != "1":
        return
    tag = f"rec{uuid.uuid4().hex[:6]}"
    await seed(postgres_dsn, stripe_client, tag, customers=2)  # counters no reconciliation covered
    client = temporal_env.client
    w, close = await worker_module.build_worker(client, settings_for(postgres_dsn, emulator), task_queue=task_queue)
    try:
        async with w:
            handle = await client.start_workflow(DailyChecks.run, DailyChecksInput(grace_minutes=0, webhook_days=1),
                                                 id=f"{tag}-daily-checks", task_queue=task_queue)
            result = await asyncio.wait_for(handle.result(), 120)
            assert CheckName.STALE_COUNTERS in result.failed, result
            path.write_text((await handle.fetch_history()).to_json())
            print(f"wrote {path}")
    finally:
        await close()
