"""ReconcileAllocations on the real stack (dev server, embedded Postgres, Stripe emulator): the
four drifts injected by SQL are found by dry-run (which writes nothing), fixed by apply with one
audit row per fix, and a second apply changes nothing; a 30-day allocation across a period
boundary is billed to the second; bad input is refused or reported, never retried forever."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import WorkflowFailureError

from allocations import contract
from allocations.pricing import request_id
from allocations.types import FindingStatus, Phase, RunOutcome, TimeUnit
from common.types import Mode

from .allocation_helpers import (
    METER,
    REPORT_TABLES,
    add_allocation,
    add_customer,
    add_rate,
    add_usage,
    audit_actions,
    request,
    run,
    snapshot,
    start,
    wait_for_phase,
)
from .recon_helpers import make_settings, running_worker

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RATE_PER_MINUTE = 6  # minor units


async def _checkout(stripe_client, emulator_admin, stripe_customer: str, amount: int) -> str:
    product = await stripe_client.v1.products.create_async(params={"name": "gpu hours"})
    price = await stripe_client.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": amount})
    cs = await stripe_client.v1.checkout.sessions.create_async(params={
        "mode": "payment", "customer": stripe_customer, "success_url": "https://example.com/ok",
        "line_items": [{"price": price.id, "quantity": 1}]})
    await emulator_admin.complete_checkout_session(cs.id)
    return cs.id


async def _seed_four_drifts(pool: asyncpg.Pool, stripe_client, emulator_admin) -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    cus = await stripe_client.v1.customers.create_async(params={"name": "acme"})
    c = f"acme-{tag}"
    await add_customer(pool, c, cus.id)
    await add_rate(pool, RATE_PER_MINUTE)
    ids = {k: f"{k}-{tag}" for k in ("missing", "orphan", "unbilled", "mismatch", "healthy")}
    # 1. missing open usage: active since 09:00 today, no usage record.
    await add_allocation(pool, ids["missing"], c, "active", AS_OF - timedelta(hours=3))
    # 2. orphan open usage: released at 10:00, its record still open.
    await add_allocation(pool, ids["orphan"], c, "released", AS_OF - timedelta(hours=5),
                         released_at=AS_OF - timedelta(hours=2))
    await add_usage(pool, f"u-{ids['orphan']}", ids["orphan"], AS_OF - timedelta(hours=5))
    # 3. unbilled closed usage: 90 minutes, closed with the right accrued cost, no debit.
    await add_allocation(pool, ids["unbilled"], c, "released", AS_OF - timedelta(hours=4),
                         released_at=AS_OF - timedelta(hours=2, minutes=30))
    await add_usage(pool, f"u-{ids['unbilled']}", ids["unbilled"], AS_OF - timedelta(hours=4),
                    AS_OF - timedelta(hours=2, minutes=30), accrued_cost_minor=90 * RATE_PER_MINUTE)
    # A closed record whose accrued cost disagrees with rate x duration: held, never billed.
    await add_allocation(pool, ids["mismatch"], c, "released", AS_OF - timedelta(hours=4),
                         released_at=AS_OF - timedelta(hours=3))
    await add_usage(pool, f"u-{ids['mismatch']}", ids["mismatch"], AS_OF - timedelta(hours=4),
                    AS_OF - timedelta(hours=3), accrued_cost_minor=1)
    # A healthy running allocation started today: nothing to do.
    await add_allocation(pool, ids["healthy"], c, "active", AS_OF - timedelta(hours=1))
    await add_usage(pool, f"u-{ids['healthy']}", ids["healthy"], AS_OF - timedelta(hours=1))
    # 4. payment drift: a checkout Stripe completed whose session failed to reconcile, and a
    # completed session whose ledger credit exists but is not linked.
    cs = await _checkout(stripe_client, emulator_admin, cus.id, 2500)
    async with pool.acquire() as conn:
        await contract.record_payment(conn, contract.PaymentSession(
            session_id=f"ps-failed-{tag}", customer_id=c, amount_minor=2500, stripe_checkout_session_id=cs,
            status="failed_reconcile"))
        await contract.record_payment(conn, contract.PaymentSession(
            session_id=f"ps-unlinked-{tag}", customer_id=c, amount_minor=700, status="completed"))
        await conn.execute(
            "INSERT INTO billing.duration_ledger (customer_id, kind, amount_minor, source, payment_session_id) "
            "VALUES ($1, 'credit', 700, $2, $3)", c, f"credit:ps-unlinked-{tag}", f"ps-unlinked-{tag}")
    return {**ids, "customer": c, "failed": f"ps-failed-{tag}", "unlinked": f"ps-unlinked-{tag}"}


async def test_four_drifts_found_by_dry_run_fixed_once_by_apply(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator, stripe_client, emulator_admin):
    ids = await _seed_four_drifts(clean_db, stripe_client, emulator_admin)
    settings = make_settings(postgres_dsn, emulator)
    client = temporal_env.client
    async with running_worker(client, settings, task_queue):
        before = await snapshot(clean_db)
        dry = await run(client, task_queue, request("dry-run", AS_OF, page_size=2))
        assert await snapshot(clean_db) == before, "dry-run wrote outside its report"
        k = dry.counts
        assert (k.missing_open_usage, k.orphan_open_usage, k.payment_drift, k.cost_mismatch) == (1, 1, 2, 1), k
        # The orphan, once closed, is unbilled closed usage too.
        assert k.unbilled_closed_usage == 2 and k.fixes_applied == 0, k
        assert k.fixable == 1 + 1 + 2 + 2 and k.allocations_scanned == 5, k
        findings = {r["finding_key"]: r["status"] for r in await clean_db.fetch(
            "SELECT finding_key, status FROM billing.allocation_findings WHERE run_id = $1", dry.run_id)}
        assert findings[f"missing_open_usage:{ids['missing']}"] == FindingStatus.OBSERVED
        assert findings[f"cost_mismatch:u-{ids['mismatch']}"] == FindingStatus.HELD

        applied = await run(client, task_queue, request("apply", AS_OF, page_size=2, reason="ticket 7"))
        assert applied.outcome == RunOutcome.COMPLETED
        a = applied.counts
        assert (a.usage_opened, a.usage_closed, a.credits_created, a.credits_linked) == (1, 1, 1, 1), a
        assert a.fixes_applied == 6, a
        assert await audit_actions(clean_db) == {
            "allocations.open_usage": 1, "allocations.close_usage": 1, "allocations.post_debits": 2,
            "allocations.credit_payment": 1, "allocations.link_credit": 1}
        rows = await clean_db.fetch(
            "SELECT actor, reason, correlation_id, workflow_id, customer_id FROM billing.audit_log "
            "WHERE action LIKE 'allocations.%'")
        assert all(r["actor"] == "pytest" and r["reason"] and r["correlation_id"] and r["workflow_id"] == applied.run_id
                   and r["customer_id"] == ids["customer"] for r in rows), rows

        # What the fixes wrote.
        opened = await clean_db.fetchrow(
            "SELECT start_time, end_time, opened_by FROM billing.duration_usage WHERE allocation_id = $1",
            ids["missing"])
        assert opened["start_time"] == AS_OF - timedelta(hours=3) and opened["end_time"] is None
        orphan = await clean_db.fetchrow(
            "SELECT end_time, accrued_cost_minor, close_flag, billed_cost_minor, last_billed_at "
            "FROM billing.duration_usage WHERE usage_id = $1", f"u-{ids['orphan']}")
        assert orphan["end_time"] == AS_OF - timedelta(hours=2) and orphan["close_flag"] is None
        assert orphan["accrued_cost_minor"] == orphan["billed_cost_minor"] == 180 * RATE_PER_MINUTE
        assert orphan["last_billed_at"] == orphan["end_time"]
        debits = {r["usage_id"]: r["total"] for r in await clean_db.fetch(
            "SELECT usage_id, sum(amount_minor) AS total FROM billing.duration_ledger WHERE kind = 'debit' "
            "GROUP BY 1")}
        assert debits == {f"u-{ids['orphan']}": 180 * RATE_PER_MINUTE, f"u-{ids['unbilled']}": 90 * RATE_PER_MINUTE}
        events = {r["request_id"]: r["quantity"] for r in await clean_db.fetch(
            "SELECT request_id, quantity FROM billing.usage_events WHERE meter = $1", METER)}
        assert events == {request_id(f"u-{ids['orphan']}", 0): Decimal(180),
                          request_id(f"u-{ids['unbilled']}", 0): Decimal(90)}
        sessions = {r["session_id"]: (r["status"], r["kind"], r["amount_minor"]) for r in await clean_db.fetch(
            "SELECT s.session_id, s.status, l.kind, l.amount_minor FROM billing.payment_sessions s "
            "JOIN billing.duration_ledger l ON l.id = s.ledger_entry_id")}
        assert sessions == {ids["failed"]: ("completed", "credit", 2500), ids["unlinked"]: ("completed", "credit", 700)}
        assert await clean_db.fetchval("SELECT count(*) FROM billing.duration_ledger WHERE kind = 'credit'") == 2
        # The held record is still unbilled.
        assert not await clean_db.fetchval(
            "SELECT count(*) FROM billing.duration_ledger WHERE usage_id = $1", f"u-{ids['mismatch']}")

        # A second apply changes nothing (the held finding is reported again).
        after_first = await snapshot(clean_db)
        again = await run(client, task_queue, request("apply", AS_OF))
        assert await snapshot(clean_db) == after_first
        assert again.counts.fixable == 0 and again.counts.fixes_applied == 0, again.counts
        assert again.counts.cost_mismatch == 1


async def test_plan_waits_for_approval_and_applies_exactly_the_plan(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator, stripe_client, emulator_admin):
    ids = await _seed_four_drifts(clean_db, stripe_client, emulator_admin)
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        before = await snapshot(clean_db)
        handle = await start(client, task_queue, request("plan", AS_OF))
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        assert await snapshot(clean_db) == before, "a plan wrote before approval"
        # Drift that appears after the plan is not applied by it.
        await add_allocation(clean_db, f"late-{ids['customer']}", ids["customer"], "active",
                             AS_OF - timedelta(hours=1))
        from allocations.types import ApprovalDecision, ApprovalResult

        res = await handle.execute_update("approve", ApprovalDecision(actor="alice", reason="checked"),
                                          result_type=ApprovalResult)
        assert res.approved
        result = await handle.result()
    assert result.mode == Mode.PLAN and result.decided_by == "alice"
    assert result.applied is not None and result.applied.fixes_applied == 6, result.applied
    assert not await clean_db.fetchval(
        "SELECT count(*) FROM billing.duration_usage WHERE allocation_id = $1", f"late-{ids['customer']}")
    decisions = await clean_db.fetch(
        "SELECT action, actor, reason FROM billing.audit_log WHERE workflow_id = $1 AND entity_type = 'allocations_run'",
        handle.id)
    assert [tuple(r.values()) for r in decisions] == [("run.approve", "alice", "checked")]


async def test_a_rejected_plan_writes_nothing_and_the_reject_is_answered_and_audited(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator, stripe_client, emulator_admin):
    from allocations.types import ApprovalDecision, ApprovalResult

    await _seed_four_drifts(clean_db, stripe_client, emulator_admin)
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        before = await snapshot(clean_db)
        handle = await start(client, task_queue, request("plan", AS_OF))
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        # The reject ends the run: its reply and its audit row come first.
        res = await handle.execute_update("reject", ApprovalDecision(actor="bob", reason="not now"),
                                          result_type=ApprovalResult)
        result = await handle.result()
    assert res.accepted and not res.approved
    assert result.outcome == RunOutcome.REJECTED and result.decided_by == "bob" and result.applied is None
    decisions = await clean_db.fetch(
        "SELECT action, actor, reason FROM billing.audit_log WHERE workflow_id = $1", handle.id)
    assert [tuple(r.values()) for r in decisions] == [("run.reject", "bob", "not now")]
    assert await snapshot(clean_db, excluded=(*REPORT_TABLES, "audit_log")) == {
        k: v for k, v in before.items() if k != "audit_log"}


async def test_thirty_day_allocation_across_a_period_boundary_is_billed_to_the_second(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator):
    await add_customer(clean_db, "gpu-co")
    await add_rate(clean_db, 1, unit=TimeUnit.SECOND, meter_unit=TimeUnit.SECOND)  # 1 minor unit per second
    start_at = datetime(2026, 10, 17, 13, 27, 11, 250000, tzinfo=UTC)
    end_at = start_at + timedelta(days=30, seconds=17)
    duration = Decimal((end_at - start_at) / timedelta(microseconds=1)) / Decimal(1_000_000)
    async with clean_db.acquire() as conn:
        await contract.activate(conn, contract.Allocation(
            allocation_id="gpu-30d", customer_id="gpu-co", resource_class="gpu.a100", activated_at=start_at), "u-30d")
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        # Running: billed periodically, complete UTC days only.
        mid = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)
        first = await run(client, task_queue, request("apply", mid))
        assert first.counts.slices_due == 1 and first.counts.debits_posted == 17, first.counts
        assert await clean_db.fetchval(
            "SELECT last_billed_at FROM billing.duration_usage WHERE usage_id = 'u-30d'") == datetime(
                2026, 11, 3, tzinfo=UTC)
        # Released: the rest, up to the release time.
        async with clean_db.acquire() as conn:
            await contract.set_status(conn, "gpu-30d", contract.AllocationStatus.RELEASED, end_at)
            await contract.close_usage(conn, "u-30d", end_at)
        last = await run(client, task_queue, request("apply", end_at + timedelta(hours=1)))
        assert last.counts.unbilled_closed_usage == 1 and last.counts.debits_posted == 14, last.counts
        # The application's own billing afterwards is a no-op (same keys).
        async with clean_db.acquire() as conn:
            assert (await contract.bill_record(conn, "u-30d", end_at)).debits == 0

    slices = await clean_db.fetch(
        "SELECT slice_index, slice_start, slice_end, amount_minor FROM billing.duration_ledger "
        "WHERE usage_id = 'u-30d' ORDER BY slice_index")
    assert [s["slice_index"] for s in slices] == list(range(31))
    assert slices[0]["slice_start"] == start_at and slices[-1]["slice_end"] == end_at
    for a, b in zip(slices, slices[1:], strict=False):
        assert a["slice_end"] == b["slice_start"], "slices overlap or leave a gap"
    for s in slices:
        assert s["slice_start"].date() == (s["slice_end"] - timedelta(microseconds=1)).date(), "slice spans 2 days"
    assert datetime(2026, 11, 1, tzinfo=UTC) in {s["slice_start"] for s in slices}, "period boundary not a cut"
    total = sum(s["amount_minor"] for s in slices)
    assert total == int((duration + Decimal("0.5")) // 1) == 2592017  # rate x duration, rounded once
    # The meter events: one per slice, deterministic ids, quantities adding up to the duration.
    events = await clean_db.fetch(
        "SELECT request_id, quantity, occurred_at FROM billing.usage_events WHERE meter = $1 ORDER BY occurred_at",
        METER)
    assert [e["request_id"] for e in events] == [request_id("u-30d", i) for i in range(31)]
    assert sum(Decimal(e["quantity"]) for e in events) == duration.quantize(Decimal("0.000001"))
    october = sum(Decimal(e["quantity"]) for e in events if e["occurred_at"] < datetime(2026, 11, 1, tzinfo=UTC))
    assert october == Decimal((datetime(2026, 11, 1, tzinfo=UTC) - start_at) / timedelta(microseconds=1)) / 1_000_000


async def test_bad_input_is_refused_by_the_contract(clean_db):
    await add_customer(clean_db, "bad-co")
    await add_rate(clean_db, 1)
    t = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(asyncpg.CheckViolationError):
        await add_allocation(clean_db, "a-unknown", "bad-co", "exploded", t)
    await add_allocation(clean_db, "a-ok", "bad-co", "active", t)
    with pytest.raises(asyncpg.CheckViolationError):
        await add_usage(clean_db, "u-backwards", "a-ok", t, t - timedelta(seconds=1))
    with pytest.raises(asyncpg.CheckViolationError):
        await clean_db.execute(
            "INSERT INTO billing.allocation_rates (resource_class, effective_from, rate_minor, unit, meter) "
            "VALUES ('x', now(), -1, 'second', 'm')")
    with pytest.raises(asyncpg.CheckViolationError):
        await clean_db.execute(
            "INSERT INTO billing.allocation_rates (resource_class, effective_from, rate_minor, unit, meter) "
            "VALUES ('x', now(), 'NaN', 'second', 'm')")
    with pytest.raises(asyncpg.CheckViolationError):
        await clean_db.execute(
            "INSERT INTO billing.duration_ledger (customer_id, kind, amount_minor, source, usage_id, slice_index, "
            "slice_start, slice_end) VALUES ('bad-co', 'debit', -5, 's', NULL, 0, now(), now())")
    await add_usage(clean_db, "u-open", "a-ok", t)
    with pytest.raises(asyncpg.UniqueViolationError):  # one open record per allocation
        await add_usage(clean_db, "u-open-2", "a-ok", t + timedelta(hours=1))
    with pytest.raises(ValueError):
        contract.Rate(resource_class="x", effective_from=t, rate_minor=Decimal(-1), unit="second", meter="m")


async def test_bad_data_is_a_finding_and_bad_requests_fail_for_good(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator):
    await add_customer(clean_db, "norate-co")
    await add_allocation(clean_db, "a-norate", "norate-co", "released", AS_OF - timedelta(hours=3),
                         released_at=AS_OF - timedelta(hours=1), resource_class="tpu.v9")
    await add_usage(clean_db, "u-norate", "a-norate", AS_OF - timedelta(hours=3), AS_OF - timedelta(hours=1))
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        res = await run(client, task_queue, request("apply", AS_OF))
        assert res.counts.no_rate == 1 and res.counts.fixes_applied == 0, res.counts
        assert any("no rate" in line for line in res.findings)
        # An unknown customer fails the run at once, non-retryably.
        handle = await start(client, task_queue, request("apply", AS_OF, customer="nobody"))
        with pytest.raises(WorkflowFailureError) as e:
            await handle.result()
        assert getattr(e.value.cause, "type", None) == "UnknownCustomer"
        assert "nobody" in str(getattr(e.value.cause, "message", ""))
        # Malformed input (from `temporal workflow start`) fails with the validation message.
        handle = await client.start_workflow(
            "ReconcileAllocations", {"mode": "apply", "page_size": 0}, id=f"bad-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue)
        with pytest.raises(WorkflowFailureError) as e:
            await handle.result()
        assert "page_size" in str(e.value.cause)


async def test_paused_auto_healing_makes_apply_observe_only(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator, stripe_client, emulator_admin):
    from autoheal import switch

    await _seed_four_drifts(clean_db, stripe_client, emulator_admin)
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        async with clean_db.acquire() as conn:
            await switch.set_paused(conn, paused=True, actor="oncall", reason="incident 42")
        before = await snapshot(clean_db)
        try:
            paused = await run(client, task_queue, request("apply", AS_OF))
            assert await snapshot(clean_db) == before, "a paused apply wrote"
        finally:
            async with clean_db.acquire() as conn:
                await switch.set_paused(conn, paused=False, actor="oncall", reason="resolved")
        assert paused.outcome == RunOutcome.OBSERVE_ONLY and paused.paused
        assert paused.counts.fixable == 6 and paused.counts.fixes_applied == 0, paused.counts
        resumed = await run(client, task_queue, request("apply", AS_OF))
    assert resumed.outcome == RunOutcome.COMPLETED and resumed.counts.fixes_applied == 6, resumed.counts


async def test_slices_reach_stripe_through_the_usage_reconciliation(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator, stripe_client, emulator_admin):
    """The debits' usage events are ordinary usage: ReconcileUsage pushes them to the meter."""
    from reconcile.types import ReconcileUsageInput

    from .recon_helpers import create_meters
    from .recon_helpers import run as run_usage

    meters = await create_meters(stripe_client, {METER: "GPU minutes"})
    cus = await stripe_client.v1.customers.create_async(params={"name": "gpu"})
    await add_customer(clean_db, "gpu-stripe", cus.id)
    await add_rate(clean_db, RATE_PER_MINUTE)
    now = datetime.now(UTC).replace(microsecond=0)
    start_at = now - timedelta(days=1, hours=3, minutes=7, seconds=5)
    end_at = now - timedelta(minutes=10)
    await add_allocation(clean_db, "gpu-s", "gpu-stripe", "released", start_at, released_at=end_at)
    await add_usage(clean_db, "u-gpu-s", "gpu-s", start_at, end_at)
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        res = await run(client, task_queue, request("apply", now))
        assert res.counts.usage_events_written >= 2, res.counts
        usage = await run_usage(client, task_queue, ReconcileUsageInput(
            mode=Mode.APPLY, start_date=start_at.date(), end_date=now.date(), customers=["gpu-stripe"],
            meters=[METER], settle_seconds=1, actor="pytest"), f"usage-{uuid.uuid4().hex[:8]}")
        assert usage.counts.corrections_pushed >= 2, usage.counts
    minutes = Decimal((end_at - start_at) / timedelta(seconds=1)) / 60
    # Per UTC day: the allocation's seconds that day = the ledger's usage that day = Stripe's.
    expected: dict[date, Decimal] = {}
    at = start_at
    while at < end_at:
        midnight = datetime.combine(at.date() + timedelta(days=1), datetime.min.time(), UTC)
        expected[at.date()] = Decimal((min(midnight, end_at) - at) / timedelta(seconds=1)) / 60
        at = midnight
    assert abs(sum(expected.values()) - minutes) < Decimal("1e-20") and len(expected) >= 2
    ledger = {r["day"]: r["q"] for r in await clean_db.fetch(
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(quantity) AS q FROM billing.usage_events "
        "WHERE customer_id = 'gpu-stripe' AND meter = $1 GROUP BY 1", METER)}
    assert ledger.keys() == expected.keys(), (ledger, expected)
    for day, want in expected.items():  # the ledger keeps minutes to 6 decimals per slice
        assert abs(ledger[day] - want) < Decimal("0.00001"), (day, ledger[day], want)
    page = await stripe_client.v1.billing.meters.event_summaries.list_async(meters[METER], params={
        "customer": cus.id, "start_time": int(datetime.combine(start_at.date(), datetime.min.time(), UTC).timestamp()),
        "end_time": int(datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC).timestamp()),
        "value_grouping_window": "day"})
    stripe_days = {datetime.fromtimestamp(s.start_time, UTC).date(): Decimal(str(s.aggregated_value))
                   for s in page.data if s.aggregated_value}
    assert stripe_days.keys() == expected.keys(), (stripe_days, expected)
    for day, want in expected.items():
        assert abs(stripe_days[day] - want) < Decimal("0.00001"), (day, stripe_days[day], want)


ROOT = Path(__file__).resolve().parents[2]
KILL_ALLOCATIONS = 300  # closed records of 20 days: 21 slices each


def _spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_worker_killed_mid_apply_leaves_no_double_and_no_missing_debit(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator, tmp_path):
    await add_customer(clean_db, "kill-co")
    await add_rate(clean_db, Decimal("2.5"), unit=TimeUnit.HOUR)
    t0 = datetime(2026, 10, 1, 7, 30, tzinfo=UTC)
    rows = [(f"k-{i:04d}", "kill-co", "gpu.a100", "released", t0 + timedelta(minutes=i),
             t0 + timedelta(days=20, minutes=2 * i)) for i in range(KILL_ALLOCATIONS)]
    await clean_db.executemany(
        "INSERT INTO billing.allocations (allocation_id, customer_id, resource_class, status, activated_at, "
        "released_at, status_changed_at) VALUES ($1, $2, $3, $4, $5, $6, $6)", rows)
    await clean_db.executemany(
        "INSERT INTO billing.duration_usage (usage_id, allocation_id, start_time, end_time) VALUES ($1, $2, $3, $4)",
        [(f"u-{a}", a, s, e) for a, _, _, _, s, e in rows])
    expected_slices = sum(len(contract_slices(s, e)) for *_, s, e in rows)
    expected_amount = sum(sum(x.amount_minor for x in contract_slices(s, e)) for *_, s, e in rows)
    env = {**os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
           "TEMPORAL_ADDRESS": temporal_env.address, "TEMPORAL_NAMESPACE": temporal_env.namespace,
           "BILLING_TASK_QUEUE": task_queue, "STRIPE_RATE_LIMIT": "0", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "worker.log"
    first = _spawn_worker(env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        handle = await start(temporal_env.client, task_queue, request("apply", AS_OF, page_size=25))
        deadline = time.monotonic() + 60
        while await clean_db.fetchval("SELECT count(*) FROM billing.duration_ledger") < 100:
            assert first.poll() is None, f"worker exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no debit was posted:\n{log.read_text()[-3000:]}"
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = await clean_db.fetchval("SELECT count(*) FROM billing.duration_ledger")
        assert 0 < at_kill < expected_slices, f"the kill did not land mid-apply ({at_kill}/{expected_slices})"
        second = _spawn_worker(env, log)
        result = await asyncio.wait_for(handle.result(), 120)
    finally:
        for p in (first, second):
            if p is not None:
                _stop(p)
    assert result.outcome == RunOutcome.COMPLETED
    per_slice = await clean_db.fetch(
        "SELECT usage_id, slice_index, count(*) AS n FROM billing.duration_ledger GROUP BY 1, 2 HAVING count(*) > 1")
    assert not per_slice, f"double debits: {per_slice[:5]}"
    n, amount = await clean_db.fetchrow(
        "SELECT count(*), sum(amount_minor) FROM billing.duration_ledger WHERE kind = 'debit'")
    assert (n, amount) == (expected_slices, expected_amount), "missing debits"
    assert await clean_db.fetchval(
        "SELECT count(*) FROM billing.usage_events WHERE request_id LIKE 'dur:%'") == expected_slices
    assert await clean_db.fetchval("SELECT sum(dedupe_count) FROM billing.usage_events") == 0
    # One audit row per billed record, never two.
    assert await audit_actions(clean_db) == {"allocations.post_debits": KILL_ALLOCATIONS}
    assert not await clean_db.fetchval(
        "SELECT count(*) FROM billing.duration_usage WHERE billed_cost_minor IS DISTINCT FROM "
        "(SELECT sum(amount_minor) FROM billing.duration_ledger l WHERE l.usage_id = duration_usage.usage_id)")


def contract_slices(start_at: datetime, end_at: datetime) -> list:
    from allocations.pricing import billable_slices

    return billable_slices(start_at, end_at, end_at, Decimal("2.5"), TimeUnit.HOUR, TimeUnit.MINUTE)


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from starter.cli import main; main()", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_reconcile_and_show(clean_db, temporal_env, task_queue, postgres_dsn, emulator, stripe_client,
                                      emulator_admin):
    import json

    ids = await _seed_four_drifts(clean_db, stripe_client, emulator_admin)
    env = {**os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
           "TEMPORAL_ADDRESS": temporal_env.address, "BILLING_TASK_QUEUE": task_queue, "COLUMNS": "60"}
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, err = await _cli(env, "allocations", "reconcile", "--dry-run", "--as-of", AS_OF.isoformat(),
                                    "--json")
        assert code == 0, err
        dry = json.loads(out)
        assert dry["mode"] == "dry-run" and dry["counts"]["missing_open_usage"] == 1, dry
        code, out, err = await _cli(env, "allocations", "reconcile", "--as-of", AS_OF.isoformat())
        assert code == 0 and "dry-run completed" in out and "missing_open_usage" in out, (out, err)
        assert f"[observed] missing_open_usage {ids['missing']}" in out, out
        # --plan stops following once the plan is stored; the plan is decided by update.
        code, out, err = await _cli(env, "allocations", "reconcile", "--plan", "--as-of", AS_OF.isoformat(), "--json")
        assert code == 0, err
        planned = json.loads(out)
        assert planned["status"] == "awaiting_approval" and planned["counts"]["fixable"] == 6, planned
        code, out, err = await _cli(env, "allocations", "reject", planned["workflow_id"], "--actor", "bob")
        assert code == 0 and "rejected by bob" in out, (out, err)
        code, out, err = await _cli(env, "allocations", "approve", planned["workflow_id"], "--actor", "bob")
        assert code == 1 and "already completed" in err, (out, err)  # the reject ended it
        for blank in (["--actor", " "], ["--reason", ""]):
            code, out, err = await _cli(env, "allocations", "reconcile", "--apply", *blank)
            assert code == 2 and "must not be blank" in err, (out, err)
        code, out, err = await _cli(env, "allocations", "reconcile", "--apply", "--as-of", AS_OF.isoformat(),
                                    "--customer", ids["customer"], "--actor", "alice", "--reason", "ticket 9",
                                    "--json")
        assert code == 0, err
        assert json.loads(out)["counts"]["fixes_applied"] == 6
        code, out, err = await _cli(env, "allocations", "reconcile", "--apply", "--customer", "nobody", "--json")
        assert code == 2 and json.loads(out)["type"] == "UnknownCustomer", (out, err)
    code, out, err = await _cli(env, "allocations", "show", ids["orphan"], "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert [t["event"] for t in shown["timeline"]] == ["activated", "released"]
    assert len(shown["usage"]) == 1 and shown["usage"][0]["closed_by"] == "reconcile"
    assert len(shown["debits"]) == 1 and len(shown["events"]) == 1
    assert {a["action"] for a in shown["audit"]} == {"allocations.close_usage", "allocations.post_debits"}
    assert all(a["actor"] == "alice" for a in shown["audit"])
    code, out, err = await _cli(env, "allocations", "show", ids["orphan"])
    assert code == 0 and "allocations.post_debits" in out, err
    code, _, err = await _cli(env, "allocations", "show", "no-such-allocation")
    assert code == 1 and "unknown allocation" in err  # not found, like `report` of an unknown run


async def test_a_fix_the_database_refuses_is_reported_and_the_run_goes_on(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator):
    await add_customer(clean_db, "refuse-co")
    await add_rate(clean_db, RATE_PER_MINUTE)
    for a in ("a-refused", "a-fine"):
        await add_allocation(clean_db, a, "refuse-co", "released", AS_OF - timedelta(hours=3),
                             released_at=AS_OF - timedelta(hours=1))
        await add_usage(clean_db, f"u-{a}", a, AS_OF - timedelta(hours=3), AS_OF - timedelta(hours=1))
    # Stands for any deterministic refusal (a constraint the app added, a bad row): a retry can't help.
    await clean_db.execute("""
        CREATE FUNCTION billing.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.usage_id = 'u-a-refused' THEN
                RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_refuse BEFORE INSERT ON billing.duration_ledger
            FOR EACH ROW EXECUTE FUNCTION billing.test_refuse();
    """)
    try:
        client = temporal_env.client
        async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
            res = await run(client, task_queue, request("apply", AS_OF))
    finally:
        await clean_db.execute("DROP TRIGGER test_refuse ON billing.duration_ledger; "
                               "DROP FUNCTION billing.test_refuse()")
    assert res.outcome == RunOutcome.COMPLETED
    assert res.counts.fix_errors == 1 and res.counts.fixes_applied == 1, res.counts
    assert any("a-refused" in line and "fix_error" in line for line in res.findings)
    assert await clean_db.fetchval("SELECT count(*) FROM billing.duration_ledger WHERE usage_id = 'u-a-refused'") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM billing.audit_log WHERE entity_id = 'u-a-refused'") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM billing.duration_ledger WHERE usage_id = 'u-a-fine'") == 1
