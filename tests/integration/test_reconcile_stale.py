"""An approved plan is re-checked per key at apply time against the ledger, our outbox and a
fresh Stripe summary, and only what is still right is applied (DESIGN.md, point 10).

The reported case: another system over-reported a key by 55,514; the run planned a -55,514
compensation and waited for approval; usage then grew by 55,664. Applying the plan as approved
left the customer under-billed by 55,664 and the run said "completed". Now the compensation is
`stale` (counted, visible in the report), the key is re-planned by the run's verify pass (an
under-reporting of 150), and an apply run pushes exactly those 150."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.ingest import UsageEvent, ingest
from common.types import Mode, RunStatus
from reconcile.types import ApprovalDecision, Phase
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import (
    assert_stripe_equals_ledger,
    make_settings,
    run,
    running_worker,
    seed_world,
    start,
    wait_phase,
)

pytestmark = pytest.mark.integration

FOREIGN = Decimal(55_514)
GROWTH = Decimal(55_664)


async def _over_reported_then_grown(clean_db, stripe_client, temporal_env, task_queue, world, mode: Mode):
    """Sync, let another system over-report, plan (held), let usage grow, approve: the result."""
    cid, sid = world.customers[0]
    day_start = datetime.combine(world.end, datetime.min.time(), tzinfo=UTC)
    synced = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"sync-{world.tag}")
    assert synced.status == RunStatus.COMPLETED and synced.counts.corrections_pushed == 1
    await stripe_client.v1.billing.meter_events.create_async(params={
        "event_name": "api_requests", "identifier": f"legacy-{world.tag}", "timestamp": int(day_start.timestamp()) + 2,
        "payload": {"stripe_customer_id": sid, "value": str(FOREIGN)}})

    handle = await start(temporal_env.client, task_queue, world.request(mode=mode), f"{mode.value}-{world.tag}")
    waiting = await wait_phase(handle, Phase.AWAITING_APPROVAL)
    assert waiting.counts.held_for_approval == 1
    async with clean_db.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"grow-{world.tag}", customer_id=cid, meter="api_requests",
                                       quantity=GROWTH, occurred_at=day_start + timedelta(seconds=1))])
    await handle.execute_update("approve", ApprovalDecision(actor="alice", reason="checked"))
    return await asyncio.wait_for(handle.result(), 60)


async def test_an_approved_plan_that_went_stale_is_not_applied_and_is_re_planned(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue, cli_env):  # noqa: F811
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, events_per_key=1,
                             meters={"api_requests": "API requests"})
    cid = world.customer_ids[0]
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        result = await _over_reported_then_grown(clean_db, stripe_client, temporal_env, task_queue, world, Mode.PLAN)
        code, out, _ = await cli(cli_env, "report", result.run_id)

    assert result.status == RunStatus.COMPLETED, result
    assert result.counts.stale_skipped == 1
    assert result.counts.corrections_pushed == 0 and result.counts.corrections_cancelled == 0
    # No compensation was sent: Stripe has our sync and the other system's event, nothing else.
    events = await emulator_admin.meter_events()
    assert sorted(e["identifier"].startswith("legacy-") for e in events) == [False, True]
    assert all(Decimal(str(e["payload"]["value"])) > 0 and not e["cancelled"] for e in events)
    # The finding says what happened; the verify pass re-planned the key: 150 missing.
    rows = {r["discrepancy_key"]: r for r in await clean_db.fetch(
        "SELECT discrepancy_key, kind, status, detail, ledger_value, stripe_value FROM billing.discrepancies "
        "WHERE run_id = $1", result.run_id)}
    key = f"stripe|{cid}|api_requests|{world.end}"
    assert rows[key]["status"] == "stale" and rows[key]["kind"] == "over_reported"
    assert "the key is now under_reported" in rows[key]["detail"]
    # The plan cancels our own recent push first and compensates the rest: both parts dropped.
    assert "dropped cancel of br_" in rows[key]["detail"] and ", compensation of -" in rows[key]["detail"]
    again = rows[f"verify|{key}"]
    assert again["kind"] == "under_reported" and again["status"] == "observed"
    assert again["ledger_value"] - again["stripe_value"] == GROWTH - FOREIGN
    # (and the counter, which `ingest` does not move: the application's job)
    assert result.verify_counts is not None and result.verify_counts.drift_count == 2
    assert code == 0 and "stale" in out

    # The next apply run pushes exactly the 150 that are missing.
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        fixed = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"after-{world.tag}")
    assert fixed.counts.corrections_pushed == 1
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    last = await clean_db.fetchval(
        "SELECT value FROM billing.stripe_usage_pushes WHERE run_id = $1", fixed.run_id)
    assert last == GROWTH - FOREIGN


async def test_an_apply_run_re_plans_its_stale_correction_in_its_verify_pass(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue):
    """In an apply run the verify pass corrects what went stale right away: one run ends with
    Stripe equal to the ledger."""
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, events_per_key=1,
                             meters={"api_requests": "API requests"})
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        result = await _over_reported_then_grown(clean_db, stripe_client, temporal_env, task_queue, world, Mode.APPLY)
    assert result.status == RunStatus.COMPLETED, result
    assert result.counts.stale_skipped == 1 and result.counts.corrections_pushed == 0
    assert result.verify_counts is not None and result.verify_counts.corrections_pushed == 1
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
