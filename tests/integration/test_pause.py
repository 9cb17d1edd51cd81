"""`pause` stops corrective writes within seconds, in the middle of a page, and `resume` finishes
the job with every correction exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from common.types import Mode, PauseRequest, RunStatus
from reconcile.types import ReconcileProgress

from .recon_helpers import (
    assert_stripe_equals_ledger,
    make_settings,
    running_worker,
    seed_world,
    stable_meter_event_count,
    start,
)

pytestmark = pytest.mark.integration



async def test_pause_stops_writes_mid_page_and_resume_completes_exactly_once(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=40, events_per_key=1,
                             meters={"api_requests": "API requests"}, with_counters=False)
    n_keys = len(world.customers) * len(world.days)
    # One page holds every customer, and the limiter makes it last well over 10 s.
    settings = make_settings(postgres_dsn, emulator, STRIPE_RATE_LIMIT=8, RECON_PAGE_SIZE=500)
    async with running_worker(temporal_env.client, settings, task_queue):
        handle = await start(temporal_env.client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=1),
                             f"pause-{world.tag}")
        deadline = time.monotonic() + 30
        while len(await emulator_admin.meter_events()) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await handle.signal("pause", PauseRequest(actor="alice", reason="incident 42"))

        # Writes stop within the heartbeat interval (5 s) plus the call in flight, long before
        # the page would have finished.
        paused_at = await stable_meter_event_count(emulator_admin, quiet=4, limit=15)
        assert 0 < paused_at < n_keys
        progress = await handle.query("progress", result_type=ReconcileProgress)
        assert progress.paused is True

        await handle.signal("resume", PauseRequest(actor="alice", reason="resolved"))
        result = await asyncio.wait_for(handle.result(), 120)

    assert result.status == RunStatus.COMPLETED
    events = await emulator_admin.meter_events()
    identifiers = Counter(e["identifier"] for e in events)
    assert [i for i, n in identifiers.items() if n > 1] == []
    assert len(events) == n_keys  # one push per key, none lost, none twice
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    actions = [r["action"] for r in await clean_db.fetch(
        "SELECT action FROM billing.audit_log WHERE workflow_id = $1 AND entity_type = 'reconciliation_run' "
        "ORDER BY id", result.run_id)]
    assert actions == ["run.pause", "run.resume"]
