"""What the dispatcher's sweep finds on its own: a run stuck for hours, auto-healing paused for
too long, and a failed run of another job (through Temporal's visibility API). Each once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date

import pytest

from backfill.types import CatchUpBackfillInput
from common.types import Mode
from notify import sweeps

from .recon_helpers import make_settings, running_worker

pytestmark = pytest.mark.integration


async def test_stuck_runs_and_long_pauses_are_notified_once(clean_db, postgres_dsn, emulator):
    settings = make_settings(postgres_dsn, emulator)
    await clean_db.execute(
        "INSERT INTO billing.reconciliation_runs (run_id, workflow_run_id, mode, window_start, window_end, status, "
        "started_at) VALUES ('stuck-1', 'r1', 'apply', '2026-11-01', '2026-11-02', 'verifying', now() - interval '7 hours'), "
        "('waits-1', 'r2', 'plan', '2026-11-01', '2026-11-02', 'awaiting_approval', now() - interval '7 hours'), "
        "('young-1', 'r3', 'apply', '2026-11-01', '2026-11-02', 'running', now() - interval '1 hour')")
    await clean_db.execute(
        "INSERT INTO billing.autoheal_state (id, paused, since, actor, reason) "
        "VALUES (true, true, now() - interval '5 hours', 'alice', 'incident 9') "
        "ON CONFLICT (id) DO UPDATE SET paused = true, since = EXCLUDED.since, actor = 'alice', reason = 'incident 9'")
    try:
        async with clean_db.acquire() as conn:
            assert await sweeps.sweep(conn, settings) == 2
            assert await sweeps.sweep(conn, settings) == 0
        rows = {r["kind"]: r for r in await clean_db.fetch("SELECT kind, subject, body FROM billing.notifications")}
        assert set(rows) == {"run_stuck", "autoheal_paused_too_long"}
        assert rows["run_stuck"]["subject"] == "stuck-1@r1"
        assert "verifying for 7.0 h" in rows["run_stuck"]["body"]["title"]
        assert rows["autoheal_paused_too_long"]["body"]["title"].startswith("Auto-healing paused for 5.0 h by alice")
    finally:
        await clean_db.execute("UPDATE billing.autoheal_state SET paused = false")


async def test_a_failed_run_of_another_job_is_notified_once(clean_db, temporal_env, task_queue, postgres_dsn, emulator):
    settings = make_settings(postgres_dsn, emulator, BILLING_TASK_QUEUE=task_queue)
    client = temporal_env.client
    wid = f"backfill-future-{uuid.uuid4().hex[:6]}"
    async with running_worker(client, settings, task_queue):
        handle = await client.start_workflow(
            "CatchUpBackfill", CatchUpBackfillInput(start_date=date(2099, 1, 1), end_date=date(2099, 1, 2),
                                                    mode=Mode.DRY_RUN), id=wid, task_queue=task_queue)
        with pytest.raises(Exception, match="failed"):
            await asyncio.wait_for(handle.result(), 60)
    async with clean_db.acquire() as conn:
        for _ in range(50):  # visibility is eventually consistent
            if await sweeps.failed_job_runs(conn, client, settings, "default"):
                break
            await asyncio.sleep(0.2)
        assert await sweeps.failed_job_runs(conn, client, settings, "default") == 0
    row = await clean_db.fetchrow("SELECT kind, subject, body FROM billing.notifications WHERE subject LIKE $1",
                                  f"{wid}@%")
    # Another deployment (task queue) sharing the namespace does not see it (with the row gone,
    # it would be recorded again if it did).
    await clean_db.execute("DELETE FROM billing.notifications")
    other = make_settings(postgres_dsn, emulator, BILLING_TASK_QUEUE=f"{task_queue}-other")
    async with clean_db.acquire() as conn:
        assert await sweeps.failed_job_runs(conn, client, other, "default") == 0
    assert row is not None and row["kind"] == "run_failed"
    assert row["body"]["title"] == f"CatchUpBackfill run {wid} failed"
    assert row["body"]["commands"][0].startswith(f"temporal workflow describe --workflow-id {wid}")
