"""Edge cases a billing engineer hits in real data: usage no meter bills, a Stripe customer that
no longer exists, a workflow id reused for a new run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.ingest import UsageEvent, ingest
from common.types import Mode, RunStatus
from tests.integration.recon_helpers import (
    assert_stripe_equals_ledger,
    make_settings,
    run,
    running_worker,
    seed_world,
)

pytestmark = pytest.mark.integration


async def test_usage_under_an_unknown_meter_is_reported_as_never_billed(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=2, days=1)
    cid = world.customer_ids[0]
    async with clean_db.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"gpu-{world.tag}", customer_id=cid, meter="gpu_minutes",
                                       quantity=Decimal(7), occurred_at=datetime.now(UTC) - timedelta(minutes=1))])
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        result = await run(temporal_env.client, task_queue, world.request(mode=Mode.DRY_RUN), f"unmetered-{world.tag}")
    assert result.counts.unmetered_usage == 1
    row = await clean_db.fetchrow(
        "SELECT kind, meter, ledger_value, status FROM billing.discrepancies WHERE run_id = $1 AND kind = 'unmetered_usage'",
        result.run_id)
    assert (row["meter"], row["ledger_value"], row["status"]) == ("gpu_minutes", Decimal(7), "observed")


async def test_a_customer_stripe_no_longer_knows_is_reported_and_the_run_goes_on(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=3, days=1)
    ghost = world.customer_ids[1]
    await clean_db.execute("UPDATE billing.customers SET stripe_customer_id = 'cus_deleted_long_ago' "
                           "WHERE customer_id = $1", ghost)
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        result = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"ghost-{world.tag}")
    assert result.status == RunStatus.COMPLETED
    assert result.counts.reconcile_failures == len(world.meters)  # one per (customer, meter)
    failed = await clean_db.fetch(
        "SELECT customer_id, detail FROM billing.discrepancies WHERE run_id = $1 AND kind = 'stripe_read_failed'",
        result.run_id)
    assert {r["customer_id"] for r in failed} == {ghost}
    assert all("Stripe refused the summary read" in r["detail"] for r in failed)
    # Every other customer was reconciled in the same run.
    world.customers = [c for c in world.customers if c[0] != ghost]
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)


async def test_a_reused_workflow_id_starts_a_fresh_report(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1)
    run_id = f"reused-{world.tag}"
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        first = await run(temporal_env.client, task_queue, world.request(mode=Mode.DRY_RUN), run_id)
        assert first.counts.drift_count > 0
        await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"sync-{world.tag}")
        second = await run(temporal_env.client, task_queue, world.request(mode=Mode.DRY_RUN), run_id)
    assert second.counts.drift_count == 0
    # The first execution's findings are not mixed into the second one's report.
    assert await clean_db.fetchval("SELECT count(*) FROM billing.discrepancies WHERE run_id = $1", run_id) == 0
    run_row = await clean_db.fetchrow("SELECT status, counts FROM billing.reconciliation_runs WHERE run_id = $1", run_id)
    assert run_row["status"] == "completed" and run_row["counts"]["drift_count"] == 0


async def test_a_planned_push_another_run_is_sending_is_left_to_that_run(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn):
    """Two runs over the same customers (a backfill's days run side by side): a page's
    crash-recovery flush must not send a row another run planned a moment ago and is about to
    send, or both count it (found by the chaos run: 31 pushes counted for 30 keys)."""
    from billing.stripe_gateway import StripeGateway, make_stripe_client
    from reconcile.corrections import CorrectionWriter
    from reconcile.types import Counts

    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, events_per_key=1,
                             meters={"api_requests": "API requests"}, with_counters=False)
    cid, sid = world.customers[0]
    day = world.end
    ident = f"br_inflight_{world.tag}"
    await clean_db.execute(
        """INSERT INTO billing.stripe_usage_pushes (identifier, customer_id, stripe_customer_id, meter, usage_day,
                                                    value, event_timestamp, kind, status)
           VALUES ($1, $2, $3, 'api_requests', $4, 1, $5, 'delta', 'planned')""",
        ident, cid, sid, day, datetime.now(UTC) - timedelta(minutes=1))
    settings = make_settings(postgres_dsn, emulator)
    writer = CorrectionWriter(clean_db, StripeGateway(make_stripe_client(settings), None), concurrency=1)
    lock_key = f"usage-key|{cid}|api_requests|{day}"
    async with clean_db.acquire() as other_run:
        await other_run.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock_key)
        busy = Counts()
        await writer.flush_planned([cid], datetime.now(UTC), busy)
        await other_run.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key)
    assert busy.corrections_pushed == 0 and busy.stripe_writes == 0
    assert await emulator_admin.meter_events() == []
    # The other run is gone without sending (a crash): its lock went with it, the row is sent.
    after = Counts()
    await writer.flush_planned([cid], datetime.now(UTC), after)
    assert after.corrections_pushed == 1
    assert [e["identifier"] for e in await emulator_admin.meter_events()] == [ident]
    assert await clean_db.fetchval(
        "SELECT status FROM billing.stripe_usage_pushes WHERE identifier = $1", ident) == "sent"
