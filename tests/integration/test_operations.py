"""Operations: catch-up backfill, the global pause switch, Schedules."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from temporalio.client import ScheduleOverlapPolicy

from autoheal.types import AUTOHEAL_WORKFLOW_ID
from backfill.types import BackfillResult, CatchUpBackfillInput, DayOutcome
from billing import schedules
from common.types import Mode, RunStatus
from reconcile.types import ReconcileProgress

from .autoheal_helpers import set_global
from .recon_helpers import (
    assert_counters_equal_ledger,
    assert_stripe_equals_ledger,
    make_settings,
    running_worker,
    seed_world,
    stable_meter_event_count,
    start,
)

pytestmark = pytest.mark.integration


async def backfill(client, task_queue, inp: CatchUpBackfillInput, workflow_id: str) -> BackfillResult:
    return await client.execute_workflow("CatchUpBackfill", inp, id=workflow_id, task_queue=task_queue,
                                         result_type=BackfillResult)


async def test_ten_day_backfill_reconciles_every_day_and_rerun_starts_nothing(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue):
    # An outage: ten days of usage that never reached Stripe.
    world = await seed_world(clean_db, stripe_client, n_customers=3, days=10, events_per_key=1,
                             meters={"api_requests": "API requests"})
    # Scoped to this test's customers: a day's run id is then this test's own. Unscoped, it is
    # `reconcile-day-<day>-apply`, which another test's backfill over the same recent days has
    # already completed on the session's shared dev server (RUNNING_ELSEWHERE here).
    inp = CatchUpBackfillInput(start_date=world.start, end_date=world.end, mode=Mode.APPLY, settle_seconds=1,
                               max_concurrent_days=3, actor="oncall", customers=world.customer_ids)
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        first = await backfill(client, task_queue, inp, f"bf-{world.tag}")
        assert [d.outcome for d in first.days] == [DayOutcome.DONE] * 10
        assert [d.day for d in first.days] == world.days
        # One push per (customer, day), counted once: days run side by side may send each
        # other's planned pushes, but a push is sent and counted by one run only.
        assert first.counts.corrections_pushed == first.counts.stripe_writes == 3 * 10
        events = await emulator_admin.meter_events()
        assert len(events) == 30 and max(Counter(e["identifier"] for e in events).values()) == 1
        assert first.replay is not None and "counts" in first.replay  # the webhook replay ran
        assert first.resync is not None and "skipped" not in first.resync and "failed" not in first.resync
        await assert_stripe_equals_ledger(clean_db, stripe_client, world)
        await assert_counters_equal_ledger(clean_db, world)
        runs = await clean_db.fetchval("SELECT count(*) FROM billing.reconciliation_runs")
        writes = len(await emulator_admin.meter_events())

        again = await backfill(client, task_queue, inp, f"bf-{world.tag}")
    assert [d.outcome for d in again.days] == [DayOutcome.ALREADY_DONE] * 10
    assert again.replay == {"skipped": f"backfill-replay-{world.start}-{world.end}-apply already ran"}
    assert again.resync == {"skipped": f"backfill-resync-{world.start}-{world.end}-apply already ran"}
    assert await clean_db.fetchval("SELECT count(*) FROM billing.reconciliation_runs") == runs
    assert len(await emulator_admin.meter_events()) == writes


async def test_failed_days_are_reported_and_retried_alone(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=2, events_per_key=1,
                             meters={"api_requests": "API requests"})
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        bad = CatchUpBackfillInput(start_date=world.start, end_date=world.end, mode=Mode.APPLY, settle_seconds=1,
                                   meters=["no_such_meter"], replay_webhooks=False, resync_subscriptions=False)
        failed = await backfill(client, task_queue, bad, f"bf-bad-{world.tag}")
        assert failed.failed_days == world.days
        assert all("no active Stripe meter" in (d.error or "") for d in failed.days)
        # The same days, re-run: the failed children run again (their ids allow it), and now
        # the meter exists.
        await stripe_client.v1.billing.meters.create_async(params={
            "display_name": "x", "event_name": "no_such_meter", "default_aggregation": {"formula": "sum"}})
        retried = await backfill(client, task_queue, bad, f"bf-bad-{world.tag}")
    assert [d.outcome for d in retried.days] == [DayOutcome.DONE] * 2
    assert [d.run_id for d in retried.days] == [d.run_id for d in failed.days]


def test_backfill_input_is_validated():
    from datetime import date

    with pytest.raises(ValueError, match="before start_date"):
        CatchUpBackfillInput(start_date=date(2026, 11, 10), end_date=date(2026, 11, 1))
    with pytest.raises(ValueError, match="at most 400 days"):
        CatchUpBackfillInput(start_date=date(2024, 1, 1), end_date=date(2026, 1, 1))
    with pytest.raises(ValueError, match="dry-run and apply"):
        CatchUpBackfillInput(start_date=date(2026, 11, 1), end_date=date(2026, 11, 1), mode=Mode.PLAN)



async def test_global_pause_stops_running_and_new_runs_and_resume_completes_exactly_once(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=40, events_per_key=1,
                             meters={"api_requests": "API requests"}, with_counters=False)
    n_keys = len(world.customers) * len(world.days)
    client = temporal_env.client
    settings = make_settings(postgres_dsn, emulator, STRIPE_RATE_LIMIT=8, RECON_PAGE_SIZE=500)
    try:
        async with running_worker(client, settings, task_queue):
            handle = await start(client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=1),
                                 f"gpause-{world.tag}")
            deadline = time.monotonic() + 30
            while len(await emulator_admin.meter_events()) < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            state = await set_global(client, task_queue, "pause", "alice", "incident 42")
            assert state.paused and state.actor == "alice" and state.reason == "incident 42"

            paused_at = await stable_meter_event_count(emulator_admin, quiet=4, limit=20)
            assert 0 < paused_at < n_keys
            progress = await handle.query("progress", result_type=ReconcileProgress)
            assert progress.paused is True
            # Detection goes on: the paused run keeps scanning, observe-only.
            before = progress.customers_scanned
            for _ in range(100):
                progress = await handle.query("progress", result_type=ReconcileProgress)
                if progress.customers_scanned > before or progress.phase.value != "scanning":
                    break
                await asyncio.sleep(0.2)

            # A run started while paused is observe-only from its first page.
            late = await start(client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=1),
                               f"gpause-late-{world.tag}")
            for _ in range(100):
                p = await late.query("progress", result_type=ReconcileProgress)
                if p is not None:
                    break
                await asyncio.sleep(0.1)
            assert p is not None and p.paused is True
            assert len(await emulator_admin.meter_events()) == paused_at

            await set_global(client, task_queue, "resume", "alice", "resolved")
            result = await asyncio.wait_for(handle.result(), 180)
            late_result = await asyncio.wait_for(late.result(), 180)
    finally:
        await clean_db.execute("UPDATE billing.autoheal_state SET paused = false")
        # The control workflow's id is global and the dev server is shared by the session.
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(AUTOHEAL_WORKFLOW_ID).terminate("test done")
    assert result.status == RunStatus.COMPLETED and late_result.status == RunStatus.COMPLETED
    events = await emulator_admin.meter_events()
    assert [i for i, n in Counter(e["identifier"] for e in events).items() if n > 1] == []
    assert len(events) == n_keys  # one push per key across both runs: none lost, none twice
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    audit = [(r["action"], r["actor"], r["reason"]) for r in await clean_db.fetch(
        "SELECT action, actor, reason FROM billing.audit_log WHERE entity_type = 'autoheal' ORDER BY id")]
    assert audit == [("autoheal.pause", "alice", "incident 42"), ("autoheal.resume", "alice", "resolved")]


async def test_schedules_apply_is_idempotent_and_overlapping_ticks_are_skipped(temporal_env, task_queue):
    client = temporal_env.client
    defs = schedules.load()
    assert {d.name for d in defs} == {"usage-sync", "usage-readback", "webhook-replay",
                                      "subscription-resync", "invoice-resync", "credit-repair", "allocations-reconcile",
                                      "daily-checks", "revenue-reconciliation"}
    tag = uuid.uuid4().hex[:6]
    for d in defs:  # private ids: the dev server is shared by the whole test session
        d.name = f"{d.name}-{tag}"
    try:
        assert set((await schedules.apply(client, defs, task_queue)).values()) == {"created"}
        first = {d.name: await client.get_schedule_handle(d.schedule_id).describe() for d in defs}
        assert set((await schedules.apply(client, defs, task_queue)).values()) == {"updated"}
        second = {d.name: await client.get_schedule_handle(d.schedule_id).describe() for d in defs}
        for name in first:
            a, b = first[name].schedule, second[name].schedule
            assert (a.spec, a.action, a.policy, a.state.note, a.state.paused) == \
                   (b.spec, b.action, b.policy, b.state.note, b.state.paused), name
        sync = second[f"usage-sync-{tag}"].schedule
        # Every scheduled run is bounded, so a stuck one cannot skip every later tick.
        timeouts = {d.name.removesuffix(f"-{tag}"): second[d.name].schedule.action.execution_timeout for d in defs}
        assert timeouts == {"usage-sync": timedelta(hours=1), "usage-readback": timedelta(hours=1),
                            "webhook-replay": timedelta(hours=3), "subscription-resync": timedelta(hours=6),
                            "credit-repair": timedelta(hours=6), "invoice-resync": timedelta(hours=6),
                            "allocations-reconcile": timedelta(minutes=50), "daily-checks": timedelta(hours=2),
                            "revenue-reconciliation": timedelta(hours=12)}
        assert sync.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert sync.policy.catchup_window == timedelta(minutes=10)
        assert sync.spec.intervals[0].every == timedelta(minutes=5)
        readback = second[f"usage-readback-{tag}"].schedule
        assert readback.spec.intervals[0].every == timedelta(minutes=10)

        # A tick while the previous run still runs is skipped. No worker polls this task queue,
        # so the first triggered run stays open.
        handle = client.get_schedule_handle(f"billing-usage-sync-{tag}")
        await handle.trigger()
        for _ in range(50):
            if (await handle.describe()).info.running_actions:
                break
            await asyncio.sleep(0.1)
        await handle.trigger()
        for _ in range(50):
            info = (await handle.describe()).info
            if info.num_actions_skipped_overlap:
                break
            await asyncio.sleep(0.1)
        assert info.num_actions == 1 and info.num_actions_skipped_overlap == 1
    finally:
        for d in defs:
            h = client.get_schedule_handle(d.schedule_id)
            desc = await h.describe()
            for r in desc.info.running_actions:
                await client.get_workflow_handle(r.workflow_id).terminate("test cleanup")
            await h.delete()


def test_schedule_file_errors_are_precise(tmp_path):
    bad = tmp_path / "s.toml"
    head = '[defaults]\nexecution_timeout = "1h"\n'
    bad.write_text(head + '[schedules.x]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5 minutes"\n')
    with pytest.raises(schedules.ScheduleConfigError, match="not a duration"):
        schedules.load(bad)
    bad.write_text(head + '[schedules.x]\nworkflow = "Nope"\nnote = "n"\nevery = "5m"\n')
    with pytest.raises(schedules.ScheduleConfigError, match="unknown workflow"):
        schedules.load(bad)
    bad.write_text(head + '[schedules.x]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5m"\nat = {hour = 1}\n')
    with pytest.raises(schedules.ScheduleConfigError, match="exactly one of"):
        schedules.load(bad)
    # Every schedule is bounded...
    bad.write_text('[schedules.x]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5m"\n')
    with pytest.raises(schedules.ScheduleConfigError, match="execution_timeout"):
        schedules.load(bad)
    # ...longer than a run may wait for an approval (7 days unless the input says less)...
    bad.write_text(head + '[schedules.x]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5m"\n')
    with pytest.raises(schedules.ScheduleConfigError,
                       match=r"input.approval_timeout_seconds \(604800\) must be shorter than execution_timeout \(1h\)"):
        schedules.load(bad)
    # ...and its input is the workflow's, checked before any tick runs it.
    bad.write_text(head + '[schedules.x]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5m"\n'
                   'input = { mode = "apply", settle_seconds = -5, approval_timeout_seconds = 60 }\n')
    with pytest.raises(schedules.ScheduleConfigError, match="settle_seconds"):
        schedules.load(bad)
