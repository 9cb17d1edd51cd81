"""ReconcileAllocations honours its own `pause`/`resume` signals, sent to one run or broadcast by
AutoHealControl (`billing-recon pause`): a paused run is observe-only from the entity in hand on,
what it fixed before is counted exactly, and the next run fixes the rest exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from allocations.types import ApprovalDecision, FindingStatus, Phase, RunOutcome
from allocations.workflow import ReconcileAllocations
from common.types import PauseRequest

from .allocation_helpers import (
    add_allocation,
    add_customer,
    add_rate,
    add_usage,
    request,
    run,
    slow_debits,
    start,
    wait_for_phase,
)
from .autoheal_helpers import global_switch, set_global
from .recon_helpers import make_settings, running_worker

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RECORDS = 100  # closed records of 20 days: 21 slices (debits) each
# Every debit insert sleeps this long, so that one page of RECORDS lasts ~10 s and a pause lands
# in its middle.
SLOW_INSERT_SECONDS = 0.005


async def _run_actions(pool, workflow_id: str) -> list[tuple]:
    rows = await pool.fetch(
        "SELECT action, actor, reason FROM billing.audit_log WHERE workflow_id = $1 AND action LIKE 'run.%' "
        "ORDER BY id", workflow_id)
    return [tuple(r.values()) for r in rows]


async def test_pause_mid_page_stops_after_the_entity_in_hand_and_counts_exactly(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator):
    await add_customer(clean_db, "pause-co")
    await add_rate(clean_db, 6)
    t0 = datetime(2026, 10, 1, 7, 30, tzinfo=UTC)
    for i in range(RECORDS):
        a = f"p-{i:03d}"
        await add_allocation(clean_db, a, "pause-co", "released", t0 + timedelta(minutes=i),
                             released_at=t0 + timedelta(days=20, minutes=2 * i))
        await add_usage(clean_db, f"u-{a}", a, t0 + timedelta(minutes=i), t0 + timedelta(days=20, minutes=2 * i))
    billed_sql = "SELECT count(DISTINCT usage_id) FROM billing.duration_ledger"
    client = temporal_env.client
    async with slow_debits(clean_db, SLOW_INSERT_SECONDS), running_worker(
            client, make_settings(postgres_dsn, emulator), task_queue):
        handle = await start(client, task_queue, request("apply", AS_OF, page_size=500))
        deadline = asyncio.get_running_loop().time() + 60
        while await clean_db.fetchval(billed_sql) < 3:
            assert asyncio.get_running_loop().time() < deadline, "no record was billed"
            await asyncio.sleep(0.05)
        await handle.signal(ReconcileAllocations.pause, PauseRequest(actor="alice", reason="incident 42"))
        result = await asyncio.wait_for(handle.result(), 60)

    billed = await clean_db.fetchval(billed_sql)
    assert result.outcome == RunOutcome.OBSERVE_ONLY and result.paused
    assert 3 <= billed < RECORDS, f"the pause did not land mid-page ({billed}/{RECORDS})"
    # Whole records only, each counted and audited once; everything was still found.
    c = result.counts
    audited = await clean_db.fetchval(
        "SELECT count(*) FROM billing.audit_log WHERE workflow_id = $1 AND action = 'allocations.post_debits'",
        handle.id)
    assert c.fixes_applied == audited == billed, c
    assert c.debits_posted == await clean_db.fetchval("SELECT count(*) FROM billing.duration_ledger") == 21 * billed
    assert c.allocations_scanned == c.unbilled_closed_usage == RECORDS, c
    observed = await clean_db.fetchval(
        "SELECT count(*) FROM billing.allocation_findings WHERE run_id = $1 AND status = $2",
        handle.id, FindingStatus.OBSERVED.value)
    assert observed == RECORDS - billed
    assert await _run_actions(clean_db, handle.id) == [("run.pause", "alice", "incident 42")]

    # The next run bills exactly the rest, once.
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        again = await run(client, task_queue, request("apply", AS_OF))
    assert again.outcome == RunOutcome.COMPLETED and again.counts.fixes_applied == RECORDS - billed, again.counts
    assert not await clean_db.fetch(
        "SELECT usage_id, slice_index FROM billing.duration_ledger GROUP BY 1, 2 HAVING count(*) > 1")
    assert await clean_db.fetchval("SELECT count(DISTINCT usage_id) FROM billing.duration_ledger") == RECORDS


async def test_global_pause_and_resume_reach_a_run_waiting_for_approval(
        clean_db, temporal_env, task_queue, postgres_dsn, emulator):
    await add_customer(clean_db, "gp-co")
    await add_rate(clean_db, 6)
    await add_allocation(clean_db, "gp-missing", "gp-co", "active", AS_OF - timedelta(hours=3))
    await add_allocation(clean_db, "gp-unbilled", "gp-co", "released", AS_OF - timedelta(hours=4),
                         released_at=AS_OF - timedelta(hours=3))
    await add_usage(clean_db, "u-gp-unbilled", "gp-unbilled", AS_OF - timedelta(hours=4), AS_OF - timedelta(hours=3))
    client = temporal_env.client
    async with global_switch(client, clean_db), running_worker(client, make_settings(postgres_dsn, emulator),
                                                               task_queue):
        handle = await start(client, task_queue, request("plan", AS_OF))
        planned = await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        assert planned.counts.fixable == 2 and not planned.paused

        # `billing-recon pause`: the switch, then a `pause` to every running pausable run.
        await set_global(client, task_queue, "pause", "alice", "incident 42")
        paused = await _until_paused(handle, True)
        assert paused.phase == Phase.AWAITING_APPROVAL
        await set_global(client, task_queue, "resume", "alice", "resolved")
        await _until_paused(handle, False)

        # Resumed: the approved plan is applied.
        await handle.execute_update(ReconcileAllocations.approve, ApprovalDecision(actor="bob", reason="ok"))
        result = await asyncio.wait_for(handle.result(), 60)
    assert result.outcome == RunOutcome.COMPLETED and not result.paused
    assert result.applied is not None and result.applied.fixes_applied == 2, result.applied
    assert await clean_db.fetchval("SELECT count(*) FROM billing.duration_usage WHERE allocation_id = 'gp-missing'") == 1
    assert await clean_db.fetchval("SELECT sum(amount_minor) FROM billing.duration_ledger") == 60 * 6
    assert await _run_actions(clean_db, handle.id) == [
        ("run.pause", "alice", "incident 42"), ("run.resume", "alice", "resolved"), ("run.approve", "bob", "ok")]


async def _until_paused(handle, paused: bool):
    for _ in range(150):
        p = await handle.query(ReconcileAllocations.progress)
        if p is not None and p.paused == paused:
            return p
        await asyncio.sleep(0.2)
    raise AssertionError(f"the run never became paused={paused}")
