"""Shared helpers of the allocation tests: seeding the duration contract and running
ReconcileAllocations on a test worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal

import asyncpg
from temporalio.client import Client, WorkflowHandle

from allocations import contract
from allocations.types import (
    AllocationsProgress,
    AllocationsResult,
    ApprovalDecision,
    Phase,
    ReconcileAllocationsInput,
    TimeUnit,
)
from allocations.workflow import ReconcileAllocations
from tests.integration.recon_helpers import OBSERVATION_TABLES

GPU = "gpu.a100"
METER = "gpu_minutes"
# Tables a run's own report writes even in dry-run (like reconcile's discrepancies).
REPORT_TABLES = ("allocation_findings", *OBSERVATION_TABLES)


async def add_customer(pool: asyncpg.Pool, customer_id: str, stripe_customer_id: str | None = None) -> None:
    await pool.execute(
        "INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        customer_id, stripe_customer_id)


async def add_rate(pool: asyncpg.Pool, rate_minor: Decimal | int, unit: TimeUnit = TimeUnit.MINUTE,
                   meter_unit: TimeUnit = TimeUnit.MINUTE, resource_class: str = GPU,
                   effective_from: datetime = datetime.fromisoformat("2026-01-01T00:00:00+00:00")) -> None:
    async with pool.acquire() as conn:
        await contract.upsert_rate(conn, contract.Rate(
            resource_class=resource_class, effective_from=effective_from, rate_minor=Decimal(rate_minor), unit=unit,
            meter=METER, meter_unit=meter_unit))


async def add_allocation(pool: asyncpg.Pool, allocation_id: str, customer_id: str, status: str,
                         activated_at: datetime, released_at: datetime | None = None,
                         resource_class: str = GPU) -> None:
    await pool.execute(
        """
        INSERT INTO billing.allocations (allocation_id, customer_id, resource_class, status, activated_at,
                                         released_at, status_changed_at)
        VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz, coalesce($6::timestamptz, $5::timestamptz))
        """, allocation_id, customer_id, resource_class, status, activated_at, released_at)


async def add_usage(pool: asyncpg.Pool, usage_id: str, allocation_id: str, start: datetime,
                    end: datetime | None = None, accrued_cost_minor: int | None = None) -> None:
    await pool.execute(
        "INSERT INTO billing.duration_usage (usage_id, allocation_id, start_time, end_time, accrued_cost_minor) "
        "VALUES ($1, $2, $3, $4, $5)", usage_id, allocation_id, start, end, accrued_cost_minor)


def request(mode: str, as_of: datetime, **kw: object) -> ReconcileAllocationsInput:
    return ReconcileAllocationsInput.model_validate({"mode": mode, "as_of": as_of, "actor": "pytest", **kw})


async def start(client: Client, task_queue: str, inp: ReconcileAllocationsInput,
                workflow_id: str | None = None) -> WorkflowHandle[ReconcileAllocations, AllocationsResult]:
    return await client.start_workflow(
        ReconcileAllocations.run, inp, id=workflow_id or f"alloc-{uuid.uuid4().hex[:10]}", task_queue=task_queue)


async def wait_for_phase(handle: WorkflowHandle, phase: Phase, limit: float = 60.0) -> AllocationsProgress:
    """Poll the run's progress until it is in `phase`."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        p = await handle.query("progress", result_type=AllocationsProgress)
        if p is not None and p.phase == phase:
            return p
        assert asyncio.get_running_loop().time() < deadline, f"never reached {phase}: {p}"
        await asyncio.sleep(0.1)


async def run(client: Client, task_queue: str, inp: ReconcileAllocationsInput, workflow_id: str | None = None,
              approver: str | None = None, limit: float = 60.0) -> AllocationsResult:
    handle = await start(client, task_queue, inp, workflow_id)
    if approver is not None:
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL, limit)
        await handle.execute_update("approve", ApprovalDecision(actor=approver, reason="pytest"))
    return await asyncio.wait_for(handle.result(), limit)


async def snapshot(pool: asyncpg.Pool, excluded: tuple[str, ...] = REPORT_TABLES) -> dict[str, list[tuple]]:
    tables = [r["tablename"] for r in await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'billing' ORDER BY tablename")]
    out: dict[str, list[tuple]] = {}
    for t in tables:
        if t in excluded:
            continue
        rows = await pool.fetch(f'SELECT * FROM billing."{t}"')
        out[t] = sorted((tuple(r.values()) for r in rows), key=repr)
    return out


async def audit_actions(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT action, count(*) AS n FROM billing.audit_log WHERE action LIKE 'allocations.%' GROUP BY action")
    return {r["action"]: r["n"] for r in rows}


@contextlib.asynccontextmanager
async def slow_debits(pool: asyncpg.Pool, seconds: float) -> AsyncIterator[None]:
    """Every ledger insert sleeps `seconds` meanwhile (a trigger): billing takes long enough for a
    pause to land in the middle of a page."""
    await pool.execute(f"""
        CREATE FUNCTION billing.test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep({float(seconds)}); RETURN NEW; END $$;
        CREATE TRIGGER test_slow BEFORE INSERT ON billing.duration_ledger
            FOR EACH ROW EXECUTE FUNCTION billing.test_slow();
    """)
    try:
        yield
    finally:
        await pool.execute("DROP TRIGGER test_slow ON billing.duration_ledger; DROP FUNCTION billing.test_slow()")
