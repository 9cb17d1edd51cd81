"""SIGTERM drains a worker gracefully: the page it is working on finishes (no activity attempt is
lost to a heartbeat timeout), the process exits 0, and the run completes on the next worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from common.types import Mode, RunStatus
from reconcile.types import ReconcileResult

from .recon_helpers import assert_stripe_equals_ledger, seed_world, start
from .worker_process import spawn_worker, stop_worker

pytestmark = pytest.mark.integration


async def test_sigterm_lets_the_running_page_finish_and_exits_cleanly(
    clean_db, stripe_client, emulator, emulator_admin, temporal_env, task_queue, postgres_dsn, tmp_path,
):
    world = await seed_world(clean_db, stripe_client, n_customers=40, events_per_key=1,
                             meters={"api_requests": "API requests"}, with_counters=False)
    env = {
        **os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
        "TEMPORAL_ADDRESS": temporal_env.address, "TEMPORAL_NAMESPACE": temporal_env.namespace,
        "BILLING_TASK_QUEUE": task_queue, "STRIPE_RATE_LIMIT": "15", "RECON_PAGE_SIZE": "20",
        "RECON_SETTLE_SECONDS": "1", "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "worker.log"
    first = spawn_worker(env, log)
    second = None
    try:
        handle = await start(temporal_env.client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=1),
                             f"sigterm-{world.tag}")
        deadline = time.monotonic() + 40
        while not await emulator_admin.meter_events():  # the first page is pushing
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            await asyncio.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 40)
        assert code == 0, log.read_text()[-2000:]
        assert "shutting down" in log.read_text()

        second = spawn_worker(env, log)
        result: ReconcileResult = await asyncio.wait_for(handle.result(), 90)
        assert result.status == RunStatus.COMPLETED

        # Drained, not killed: no page activity needed a second attempt.
        retried = [e for e in (await handle.fetch_history()).events
                   if e.HasField("activity_task_started_event_attributes")
                   and e.activity_task_started_event_attributes.attempt > 1]
        assert retried == []
        await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
