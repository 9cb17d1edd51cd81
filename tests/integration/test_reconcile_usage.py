"""ReconcileUsage end to end against the real dev server, Postgres and the Stripe emulator.

Every test seeds its own customers, meters and usage (clean database, reset emulator), drives the
workflow through a worker built with `worker.build_worker`, and then reads the truth from the
three places it lives: the ledger (`billing.usage_events`), the counters and Stripe's own daily
summaries (through the SDK) and the emulator's record of accepted meter events.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from billing.ingest import UsageEvent, ingest
from billing.policy import FindingKind
from common.types import Mode, RunStatus
from reconcile.types import (
    ApprovalDecision,
    ApprovalResult,
    Phase,
    ReconcileResult,
    ReconcileUsageInput,
)

from .recon_helpers import (
    assert_counters_equal_ledger,
    assert_stripe_equals_ledger,
    inject_all_drift,
    make_settings,
    run,
    running_worker,
    seed_world,
    snapshot_billing,
    start,
    stripe_writes,
    wait_phase,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(postgres_dsn, emulator):
    return make_settings(postgres_dsn, emulator)


async def _synced_world_with_drift(clean_db, stripe_client, temporal_env, task_queue, n_customers=8):
    """Seed, sync everything to Stripe with a first apply, then inject every kind of drift."""
    world = await seed_world(clean_db, stripe_client, n_customers=n_customers)
    first = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"sync-{world.tag}")
    assert first.status == RunStatus.COMPLETED
    assert first.counts.corrections_pushed == len(world.customers) * len(world.meters) * len(world.days)
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    await assert_counters_equal_ledger(clean_db, world)
    world.notes = await inject_all_drift(clean_db, stripe_client, world)
    return world


async def test_apply_repairs_every_drift_kind(clean_db, stripe_client, emulator_admin, temporal_env,
                                              task_queue, settings):
    async with running_worker(temporal_env.client, settings, task_queue):
        world = await _synced_world_with_drift(clean_db, stripe_client, temporal_env, task_queue)
        notes = world.notes
        run_id = f"apply-{world.tag}"
        # The double push is an over-report far beyond epsilon: held for an approver.
        result = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), run_id,
                           approver="ops@example.com")

    assert result.status == RunStatus.COMPLETED
    c = result.counts
    assert c.reconcile_failures == 0
    assert c.over_quota_transitions == 1
    assert c.orphan_counters == 1
    # corrupted, orphan, quota crossing, and the late usage's counter (the app never bumped it)
    assert c.counter_repairs == 4
    assert c.held_for_approval == 1  # the over-report
    assert c.corrections_pushed >= 2  # lost push re-sent, late usage
    assert c.corrections_cancelled + c.corrections_pushed >= 3  # + the over-report fixed
    assert c.drift_count >= 6

    # Every key: counters == ledger and Stripe's daily summaries == ledger.
    await assert_counters_equal_ledger(clean_db, world)
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)

    # A discrepancy row, applied, for each correction.
    rows = await clean_db.fetch(
        "SELECT * FROM billing.discrepancies WHERE run_id = $1 AND discrepancy_key NOT LIKE 'verify|%'", run_id)
    by_key = {r["discrepancy_key"]: r for r in rows}

    def row(kind_prefix: str, cid: str, meter: str, when: date) -> dict:
        key = f"{kind_prefix}|{cid}|{meter}|{when}"
        assert key in by_key, f"no discrepancy {key}; have {sorted(by_key)}"
        r = by_key[key]
        assert r["status"] == "applied", (key, r["status"], r["detail"])
        return r

    lost = notes["lost"]
    r = row("stripe", lost["customer_id"], lost["meter"], lost["usage_day"])
    # Our push vanished from Stripe: the gap is pushed again under a NEW identifier. (The lost
    # push was already `confirmed` by the sync's verify pass; the policy deliberately does not
    # mark confirmed pushes failed -- tests/unit/test_policy.py -- so this is a plain delta.)
    assert r["kind"] in (FindingKind.LOST_PUSH, FindingKind.UNDER_REPORTED)
    params = r["action_params"]
    params = json.loads(params) if isinstance(params, str) else params
    assert params["push"]["identifier"] != lost["identifier"]
    assert Decimal(str(params["push"]["value"])) == lost["value"]

    dup = notes["double"]
    r = row("stripe", dup["customer_id"], dup["meter"], dup["usage_day"])
    assert r["kind"] == FindingKind.OVER_REPORTED and r["beyond_epsilon"]
    late = notes["late"]
    r = row("stripe", late["customer_id"], late["meter"], late["day"])
    assert r["kind"] == FindingKind.UNDER_REPORTED
    for name, kind in (("corrupted", FindingKind.COUNTER_DRIFT), ("orphan", FindingKind.ORPHAN_COUNTER),
                       ("quota", FindingKind.COUNTER_DRIFT)):
        n = notes[name]
        r = row("counter", n["customer_id"], n["meter"], n["period_start"])
        assert r["kind"] == kind, name

    # Audit: every corrective write, attributed to this run (workflow id).
    audit = await clean_db.fetch("SELECT * FROM billing.audit_log WHERE workflow_id = $1", run_id)
    def action(a) -> str:  # a push's kind is in its `after`
        after = json.loads(a["after"]) if isinstance(a["after"], str) else a["after"]
        return f"{a['action']}:{after['kind']}" if a["action"] == "usage.push_meter_event" else a["action"]

    actions = Counter(action(a) for a in audit)
    assert actions["usage.set_counter"] == 4
    # the lost push and the late usage
    assert actions["usage.push_meter_event:repush"] + actions["usage.push_meter_event:delta"] >= 2
    assert actions["usage.cancel_meter_event"] + actions["usage.push_meter_event:compensation"] >= 1  # the double
    assert actions["run.approve"] == 1
    approve = next(a for a in audit if a["action"] == "run.approve")
    assert approve["actor"] == "ops@example.com"
    entities = {a["entity_id"] for a in audit if a["action"] == "usage.set_counter"}
    for name in ("corrupted", "orphan", "quota"):
        n = notes[name]
        assert f"{n['customer_id']}|{n['meter']}|{n['period_start']}" in entities
    q = notes["quota"]
    quota_audit = [a for a in audit if a["action"] == "usage.set_counter"
                   and a["entity_id"] == f"{q['customer_id']}|{q['meter']}|{q['period_start']}"]
    after = quota_audit[0]["after"]
    after = json.loads(after) if isinstance(after, str) else after
    assert after["over_quota_transition"] is True
    assert quota_audit[0]["reason"] == FindingKind.COUNTER_DRIFT


async def test_second_apply_makes_no_stripe_writes(clean_db, stripe_client, emulator_admin, temporal_env,
                                                   task_queue, settings):
    async with running_worker(temporal_env.client, settings, task_queue):
        world = await _synced_world_with_drift(clean_db, stripe_client, temporal_env, task_queue)
        first = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY),
                          f"apply1-{world.tag}", approver="ops@example.com")
        assert first.status == RunStatus.COMPLETED
        assert first.counts.stripe_writes > 0
        await emulator_admin.reset_request_stats()
        events_before = await emulator_admin.meter_events()
        second = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY),
                           f"apply2-{world.tag}", approver="ops@example.com")

    stats = await emulator_admin.request_stats()
    assert stripe_writes(stats) == {}, stats
    assert await emulator_admin.meter_events() == events_before
    c = second.counts
    assert second.status == RunStatus.COMPLETED
    assert (c.drift_count, c.corrections_pushed, c.corrections_cancelled, c.counter_repairs,
            c.stripe_writes, c.pending, c.held_for_approval, c.over_quota_transitions) == (0,) * 8
    assert second.verify_counts is None  # nothing to verify
    assert await clean_db.fetchval(
        "SELECT count(*) FROM billing.audit_log WHERE workflow_id = $1", f"apply2-{world.tag}") == 0


async def test_dry_run_writes_nothing(clean_db, stripe_client, emulator_admin, temporal_env, task_queue,
                                      settings):
    async with running_worker(temporal_env.client, settings, task_queue):
        world = await _synced_world_with_drift(clean_db, stripe_client, temporal_env, task_queue)
        # A dry-run records its own report (reconciliation_runs + discrepancies) and nothing
        # else: every other billing table and Stripe must be untouched.
        before = await snapshot_billing(clean_db)
        events_before = await emulator_admin.meter_events()
        await emulator_admin.reset_request_stats()
        run_id = f"dry-{world.tag}"
        dry = await run(temporal_env.client, task_queue, world.request(mode=Mode.DRY_RUN), run_id)
        after = await snapshot_billing(clean_db)

    assert dry.status == RunStatus.COMPLETED and dry.mode == Mode.DRY_RUN
    assert after == before
    assert await emulator_admin.meter_events() == events_before
    stats = await emulator_admin.request_stats()
    assert [k for k in stats if k.startswith("POST ")] == [], stats
    c = dry.counts
    # It reports the drift: 3 Stripe keys (lost, double, late) and 4 counters (corrupted,
    # orphan, quota crossing, and the late usage's counter).
    assert c.drift_count == 7
    assert c.orphan_counters == 1
    assert c.over_quota_transitions == 1
    assert c.beyond_epsilon >= 1
    assert (c.corrections_pushed, c.corrections_cancelled, c.counter_repairs, c.stripe_writes) == (0, 0, 0, 0)
    statuses = Counter(r["status"] for r in await clean_db.fetch(
        "SELECT status FROM billing.discrepancies WHERE run_id = $1", run_id))
    assert statuses == {"observed": 7}
    assert await clean_db.fetchval("SELECT status FROM billing.reconciliation_runs WHERE run_id = $1",
                                   run_id) == "completed"


async def test_summary_lag_never_pushes_a_correction_twice(clean_db, stripe_client, emulator_admin,
                                                           temporal_env, task_queue, settings):
    """Stripe reflects meter events only after a lag. The settle window is what protects us:
    a push younger than the settle window is `pending` and never pushed again, and identifiers
    are deterministic, so a re-sent correction is refused by Stripe's identifier dedupe.

    (With a lag longer than the settle window, the verify pass would declare the push lost and
    push it again: the settle window must be sized above Stripe's lag. We test the guarantee,
    not a misconfiguration.)"""
    lag = 3600
    await emulator_admin.configure(summary_lag_seconds=lag)
    client = temporal_env.client
    async with running_worker(client, settings, task_queue):
        world = await seed_world(clean_db, stripe_client, n_customers=4)
        n_keys = len(world.customers) * len(world.meters) * len(world.days)
        # Run A: pushes every key, then waits out its (long) settle window before verifying.
        a = await start(client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=600), f"lag-a-{world.tag}")
        pa = await wait_phase(a, Phase.SETTLING)
        assert pa.counts.corrections_pushed == n_keys
        events = await emulator_admin.meter_events()
        assert len(events) == n_keys
        # Stripe does not show them yet.
        seen = await stripe_client.v1.billing.meters.event_summaries.list_async(
            world.meters["api_requests"], params={
                "customer": world.customers[0][1], "value_grouping_window": "day",
                "start_time": int(_midnight(world.start)), "end_time": int(_midnight(world.end + timedelta(days=1)))})
        assert all(s.aggregated_value == 0 for s in seen.data)

        # Run B, while A's pushes are still settling: everything is pending, nothing is pushed.
        await emulator_admin.reset_request_stats()
        b = await start(client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=600), f"lag-b-{world.tag}")
        pb = await wait_phase(b, Phase.SETTLING)
        assert pb.counts.pending == n_keys
        assert pb.counts.corrections_pushed == 0 and pb.counts.drift_count == 0
        assert stripe_writes(await emulator_admin.request_stats()) == {}

        # A crash between sending and recording `sent` leaves `planned` rows: the next run sends
        # them again under the same identifier, and Stripe keeps one copy.
        await clean_db.execute(
            "UPDATE billing.stripe_usage_pushes SET status = 'planned', sent_at = NULL WHERE run_id = $1",
            f"lag-a-{world.tag}")
        c = await start(client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=600), f"lag-c-{world.tag}")
        pc = await wait_phase(c, Phase.SETTLING)
        assert pc.counts.pending == n_keys and pc.counts.drift_count == 0
        assert await clean_db.fetchval(
            "SELECT count(*) FROM billing.stripe_usage_pushes WHERE status <> 'sent'") == 0

        # The lag passes (emulator clock): Stripe now shows every push exactly once.
        await emulator_admin.advance_clock(lag + 1)
        for h in (a, b, c):
            await h.terminate("test over: the lag was skipped with the emulator clock")
        final = await run(client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=1), f"lag-d-{world.tag}")

    assert final.counts.drift_count == 0 and final.counts.stripe_writes == 0
    events = await emulator_admin.meter_events()
    ids = Counter(e["identifier"] for e in events)
    assert len(events) == n_keys and all(v == 1 for v in ids.values()), ids
    outbox = {r["identifier"] for r in await clean_db.fetch("SELECT identifier FROM billing.stripe_usage_pushes")}
    assert outbox == set(ids)
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)


def _midnight(d: date) -> float:
    return datetime.combine(d, datetime.min.time(), tzinfo=UTC).timestamp()


# ---------------------------------------------------------------- plan mode and bad input


async def test_plan_waits_for_approval_and_applies_exactly_the_plan(clean_db, stripe_client, emulator_admin,
                                                                    temporal_env, task_queue, settings):
    client = temporal_env.client
    async with running_worker(client, settings, task_queue):
        world = await seed_world(clean_db, stripe_client, n_customers=3)
        late_customer = world.customer_ids[-1]
        # Nothing was ever pushed: the plan pushes every key (counters are correct).
        handle = await start(client, task_queue, world.request(mode=Mode.PLAN), f"plan-{world.tag}")
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        assert await emulator_admin.meter_events() == []
        plan = await clean_db.fetch(
            "SELECT * FROM billing.discrepancies WHERE run_id = $1", f"plan-{world.tag}")
        assert plan and {r["status"] for r in plan} == {"proposed"}
        planned_ids = {json.loads(r["action_params"])["push"]["identifier"]
                       if isinstance(r["action_params"], str) else r["action_params"]["push"]["identifier"]
                       for r in plan}
        assert await clean_db.fetchval(
            "SELECT status FROM billing.reconciliation_runs WHERE run_id = $1", f"plan-{world.tag}") == "awaiting_approval"

        # Usage that arrives after the plan is not part of it.
        async with clean_db.acquire() as conn:
            await ingest(conn, [UsageEvent(request_id=f"req-{world.tag}-after-plan", customer_id=late_customer,
                                           meter="api_requests", quantity=Decimal(1000),
                                           occurred_at=datetime.now(UTC) - timedelta(seconds=10))])

        res = await handle.execute_update("approve", ApprovalDecision(actor="alice", reason="looks right"),
                                          result_type=ApprovalResult)
        assert res.accepted and res.status == RunStatus.APPLYING
        # Already decided: a second decision is refused.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("reject", ApprovalDecision(actor="bob"))
        result: ReconcileResult = await handle.result()

    assert result.status == RunStatus.COMPLETED
    events = await emulator_admin.meter_events()
    assert {e["identifier"] for e in events} == planned_ids
    assert len(events) == len(planned_ids)
    run_row = await clean_db.fetchrow("SELECT * FROM billing.reconciliation_runs WHERE run_id = $1",
                                      f"plan-{world.tag}")
    assert run_row["approved_by"] == "alice" and run_row["status"] == "completed"
    statuses = Counter(r["status"] for r in await clean_db.fetch(
        "SELECT status FROM billing.discrepancies WHERE run_id = $1 AND discrepancy_key NOT LIKE 'verify|%'",
        f"plan-{world.tag}"))
    assert statuses == {"applied": len(plan)}
    # Audit attributes the pushes to the approver.
    actors = {r["actor"] for r in await clean_db.fetch(
        "SELECT actor FROM billing.audit_log WHERE workflow_id = $1 AND action = 'usage.push_meter_event'",
        f"plan-{world.tag}")}
    assert actors == {"alice"}


async def test_plan_rejected_applies_nothing(clean_db, stripe_client, emulator_admin, temporal_env,
                                             task_queue, settings):
    client = temporal_env.client
    async with running_worker(client, settings, task_queue):
        world = await seed_world(clean_db, stripe_client, n_customers=2)
        async with clean_db.acquire() as conn:
            await conn.execute("UPDATE billing.usage_counters SET value = value + 5 WHERE customer_id = $1",
                               world.customer_ids[0])
        before = await snapshot_billing(clean_db)
        handle = await start(client, task_queue, world.request(mode=Mode.PLAN), f"reject-{world.tag}")
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        res = await handle.execute_update("reject", ApprovalDecision(actor="carol", reason="not today"),
                                          result_type=ApprovalResult)
        assert res.accepted and res.status == RunStatus.REJECTED
        result = await handle.result()

    assert result.status == RunStatus.REJECTED
    assert await emulator_admin.meter_events() == []
    after = await snapshot_billing(clean_db)
    # Only the audit of the decision itself is new.
    audit_after = after.pop("audit_log")
    audit_before = before.pop("audit_log")
    assert after == before
    assert len(audit_after) == len(audit_before) + 1
    row = await clean_db.fetchrow("SELECT * FROM billing.reconciliation_runs WHERE run_id = $1", f"reject-{world.tag}")
    assert row["status"] == "rejected" and row["rejected_by"] == "carol"
    statuses = {r["status"] for r in await clean_db.fetch(
        "SELECT status FROM billing.discrepancies WHERE run_id = $1", f"reject-{world.tag}")}
    assert statuses == {"rejected"}


async def test_approve_refused_when_not_awaiting_approval(clean_db, stripe_client, emulator_admin,
                                                          temporal_env, task_queue, settings):
    client = temporal_env.client
    async with running_worker(client, settings, task_queue):
        world = await seed_world(clean_db, stripe_client, n_customers=1)
        handle = await start(client, task_queue, world.request(mode=Mode.APPLY, settle_seconds=600),
                             f"noappr-{world.tag}")
        await wait_phase(handle, Phase.SETTLING)
        try:
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update("approve", ApprovalDecision(actor="mallory"))
            assert "not awaiting approval" in str(err.value.cause)
            assert await clean_db.fetchval(
                "SELECT count(*) FROM billing.audit_log WHERE action = 'run.approve'") == 0
        finally:
            await handle.terminate("test over")


async def test_unknown_customer_fails_without_writing(clean_db, stripe_client, emulator_admin, temporal_env,
                                                      task_queue, settings):
    async with running_worker(temporal_env.client, settings, task_queue):
        world = await seed_world(clean_db, stripe_client, n_customers=1)
        before = await snapshot_billing(clean_db)
        handle = await start(temporal_env.client, task_queue,
                             world.request(mode=Mode.APPLY, customers=[world.customer_ids[0], "nobody"]),
                             f"unknown-{world.tag}")
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(handle.result(), 30)
    cause = err.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "UnknownCustomer" and cause.non_retryable
    assert "nobody" in cause.message
    assert await snapshot_billing(clean_db) == before
    assert await clean_db.fetchval("SELECT count(*) FROM billing.reconciliation_runs") == 0
    assert await emulator_admin.meter_events() == []


async def test_end_before_start_fails_without_writing(clean_db, stripe_client, emulator_admin, temporal_env,
                                                      task_queue, settings):
    async with running_worker(temporal_env.client, settings, task_queue):
        world = await seed_world(clean_db, stripe_client, n_customers=1)
        before = await snapshot_billing(clean_db)
        # Client-side, the model refuses it...
        with pytest.raises(ValueError, match="before start_date"):
            ReconcileUsageInput(start_date=world.end, end_date=world.start, mode=Mode.APPLY)
        # ...and raw JSON (as `temporal workflow start --input` sends it) fails the workflow.
        raw = {"start_date": world.end.isoformat(), "end_date": world.start.isoformat(), "mode": "apply"}
        handle = await temporal_env.client.start_workflow(
            "ReconcileUsage", raw, id=f"badwin-{world.tag}", task_queue=task_queue, result_type=ReconcileResult)
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(handle.result(), 30)
    cause = err.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "ValidationError"
    assert "before start_date" in cause.message
    assert await snapshot_billing(clean_db) == before
    assert await clean_db.fetchval("SELECT count(*) FROM billing.reconciliation_runs") == 0
    assert await emulator_admin.meter_events() == []


async def test_end_before_start_failure_is_non_retryable(clean_db, stripe_client, emulator_admin, temporal_env,
                                                         task_queue, settings):
    async with running_worker(temporal_env.client, settings, task_queue):
        today = datetime.now(UTC).date()
        raw = {"start_date": today.isoformat(), "end_date": (today - timedelta(days=1)).isoformat(), "mode": "apply"}
        handle = await temporal_env.client.start_workflow(
            "ReconcileUsage", raw, id=f"badwin-nr-{task_queue}", task_queue=task_queue, result_type=ReconcileResult)
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(handle.result(), 30)
    assert err.value.cause.non_retryable
