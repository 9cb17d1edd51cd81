"""The change-driven usage sync (UsageTick, reconcile/tick.py): a tick touches only keys whose
ledger changed (rows the application INSERTs straight into billing.usage_events included), keys
queued by async errors and keys whose pushes settled; it pushes L - P from our outbox without
reading Stripe, reads back only settled keys, repairs the changed keys' counters, and pushes
exactly once across a failed, retried page. Stripe's side is counted from the emulator's
request log."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import WorkflowFailureError

from billing import schedules
from common.types import Mode
from reconcile.tick_types import UsageTickInput
from reconcile.tick_workflow import UsageTick
from tests.integration.recon_helpers import (
    LONG_SETTLE,
    assert_counters_equal_ledger,
    assert_stripe_equals_ledger,
    make_settings,
    run_tick,
    running_worker,
    seed_world,
)

pytestmark = pytest.mark.integration

PUSH = "POST /v1/billing/meter_events"
SUMMARIES = "GET /v1/billing/meters/{id}/event_summaries"


async def calls(admin) -> Counter:
    """Stripe requests since the last call, by route; the log starts again."""
    seen = Counter(route for _, route, status, _ in await admin.request_log() if status == 200)
    await admin.reset_request_log()
    return seen


async def test_a_tick_touches_only_what_changed(clean_db, stripe_client, emulator, emulator_admin, postgres_dsn,
                                                temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=20, days=2)
    n_keys = 20 * len(world.meters) * 2
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        await emulator_admin.reset_request_log()
        first = await run_tick(client, task_queue, page_size=30)  # every key is new: three pages
        assert first.counts.changed_keys == n_keys and first.counts.pushed == n_keys and first.pages == 3
        # No summary read at all; the meters' ids are read once per worker (subscription periods).
        assert await calls(emulator_admin) == {PUSH: n_keys, "GET /v1/billing/meters": 1}

        idle = await run_tick(client, task_queue)
        assert idle.counts.changed_keys == 0 and await calls(emulator_admin) == {}

        # The application writes straight into the ledger (the documented SQL contract).
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        grown = world.customer_ids[:2]
        await clean_db.execute(
            """
            INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at)
            SELECT 'direct-' || c, c, 'api_requests', 7, $2 FROM unnest($1::text[]) AS c
            """, grown, today + timedelta(seconds=1))
        changed = await run_tick(client, task_queue)
        assert (changed.counts.changed_keys, changed.counts.pushed, changed.counts.counters_repaired) == (2, 2, 2)
        assert changed.counts.stripe_reads == 0 and await calls(emulator_admin) == {PUSH: 2}

        # Everything has settled (settle window 0): one read per (customer, meter), then confirmed.
        settled = await run_tick(client, task_queue, settle_seconds=0)
        assert settled.counts.settled_keys == n_keys and settled.counts.confirmed == n_keys + 2
        assert settled.counts.pushed == 0 and settled.counts.lost == 0
        made = await calls(emulator_admin)
        assert made[SUMMARIES] == 20 * len(world.meters) and sum(made.values()) == 20 * len(world.meters)
        assert sum(made.values()) <= 1.2 * (settled.counts.changed_keys + settled.counts.settled_keys)

    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    await assert_counters_equal_ledger(clean_db, world)
    events = await emulator_admin.meter_events()
    assert [i for i, n in Counter(e["identifier"] for e in events).items() if n > 1] == []
    assert await clean_db.fetchval("SELECT count(*) FROM billing.usage_daily WHERE changed_seq > synced_seq") == 0


async def test_a_failed_page_retried_pushes_each_key_once(clean_db, stripe_client, emulator, emulator_admin,
                                                          postgres_dsn, temporal_env, task_queue):
    """Stripe stores the first push, then answers 500 to it and to the SDK's retries: the page
    fails with the outbox row `planned`; the retried page sends it again under the same
    identifier (Stripe replays its saved answer) and pushes nothing twice."""
    world = await seed_world(clean_db, stripe_client, n_customers=3, days=1)
    await emulator_admin.configure(faults=[{"path_prefix": "/v1/billing/meter_events", "method": "POST",
                                            "status": 500, "after": True, "max_count": 3}])
    try:
        async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
            result = await run_tick(temporal_env.client, task_queue)
    finally:
        await emulator_admin.configure(faults=[])
    assert result.counts.changed_keys == 3 * len(world.meters)
    events = await emulator_admin.meter_events()
    assert len(events) == 3 * len(world.meters)  # one per key
    statuses = Counter(r["status"] for r in await clean_db.fetch("SELECT status FROM billing.stripe_usage_pushes"))
    assert statuses == {"sent": 3 * len(world.meters)}
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)


async def test_dry_run_and_pause_write_nothing_and_the_schedule_runs_the_tick(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=2, days=1)
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        dry = await run_tick(temporal_env.client, task_queue, mode=Mode.DRY_RUN)
        assert dry.observe_only and dry.counts.changed_keys == 2 * len(world.meters) and dry.counts.pushed == 0
        assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes") == 0
        with pytest.raises(WorkflowFailureError) as refused:
            await run_tick(temporal_env.client, task_queue, mode=Mode.PLAN)
        assert "supports dry-run and apply" in str(refused.value.cause)
        (usage_sync,) = [d for d in schedules.load() if d.name == "usage-sync"]
        assert usage_sync.workflow == "UsageTick"
        inp = UsageTickInput.model_validate({**usage_sync.input, "settle_seconds": LONG_SETTLE})
        res = await temporal_env.client.execute_workflow(UsageTick.run, inp, id=f"sched-{world.tag}",
                                                         task_queue=task_queue)
        assert res.counts.pushed == 2 * len(world.meters)
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)


async def test_a_pause_taken_during_a_tick_stops_its_writes_at_the_next_page(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn):
    """The workflow reads the switch once at its start; each page reads it again, so a pause
    taken mid-tick (an operator, the circuit breaker) stops writes within one page."""
    from temporalio.testing import ActivityEnvironment

    from billing.stripe_gateway import StripeGateway, make_stripe_client
    from reconcile.tick import TickActivities
    from reconcile.tick_types import TickPageInput

    world = await seed_world(clean_db, stripe_client, n_customers=2, days=1)
    settings = make_settings(postgres_dsn, emulator)
    acts = TickActivities(clean_db, StripeGateway(make_stripe_client(settings), None), settings)
    page = TickPageInput(run_id=f"tick-{world.tag}", workflow_run_id="r1", actor="test", page=1, page_size=100,
                         settle_seconds=LONG_SETTLE, write=True)  # started unpaused: write=True
    await clean_db.execute(
        "INSERT INTO billing.autoheal_state (id, paused, actor, reason) VALUES (true, true, 'alice', 'mid-tick') "
        "ON CONFLICT (id) DO UPDATE SET paused = true")
    try:
        result = await ActivityEnvironment().run(acts.page, page)
    finally:
        await clean_db.execute("UPDATE billing.autoheal_state SET paused = false")
    assert result.paused and not result.more
    assert result.counts.changed_keys == 2 * len(world.meters) and result.counts.pushed == 0
    assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes") == 0
    assert await emulator_admin.meter_events() == []
