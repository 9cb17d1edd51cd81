"""ReconcileAllocations' activities (Postgres, and Stripe to verify checkouts).

A page activity walks allocations (or payment drift candidates) by a (customer, id) keyset
cursor and heartbeats a checkpoint after every entity (`common.heartbeat`), so a retried page
resumes after the last one done. What one entity's check and fix does is `allocations.fixes`.

A page writes only in apply mode, and neither while auto-healing is paused (autoheal/switch.py,
read at the start of every page and every PAUSE_CHECK_EVERY entities) nor while its run is
paused (the run's `pause` signal): then it is observe-only. A page the run cancels (its `pause`
signal) finishes the entity in hand, stops, and returns what it did, `interrupted`."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from allocations.contract import payment_row
from allocations.fixes import (
    ALLOCATION_COLUMNS,
    PAYMENT_COLUMNS,
    Entity,
    check_allocation,
    check_payment,
)
from allocations.types import (
    MAX_SAMPLE,
    AuditDecisionInput,
    Cursor,
    FindingStatus,
    PageCheckpoint,
    PageInput,
    PageResult,
    Phase,
    RunContext,
    StartInput,
)
from autoheal import switch
from billing.stripe_gateway import StripeGateway
from common.audit import AuditInput, write_audit
from common.heartbeat import Heartbeater, resume
from common.paged import ErrorType, sample
from common.types import Mode

log = logging.getLogger("billing.allocations")

PAUSE_CHECK_EVERY = 25
DEFAULT_REASON = "allocations reconciliation"
RUN_ENTITY_TYPE = "allocations_run"  # the entity of the run's own audit rows (decisions, pauses)


class AllocationActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway) -> None:
        self.pool = pool
        self.stripe = stripe_gateway

    @activity.defn(name="allocations.start")
    async def start(self, inp: StartInput) -> RunContext:
        """Resolve the scope (an unknown customer is permanent) and clear the findings an earlier
        run under the same workflow id left."""
        req = inp.request
        async with self.pool.acquire() as conn:
            if req.customer is not None and not await conn.fetchval(
                    "SELECT 1 FROM billing.customers WHERE customer_id = $1", req.customer):
                raise ApplicationError(f"unknown customer {req.customer!r} (not in billing.customers)",
                                       type=ErrorType.UNKNOWN_CUSTOMER.value, non_retryable=True)
            await conn.execute("DELETE FROM billing.allocation_findings WHERE run_id = $1", inp.run_id)
        return RunContext(run_id=inp.run_id, workflow_run_id=inp.workflow_run_id, customer_id=req.customer,
                          mode=req.mode, actor=req.actor, reason=req.reason or DEFAULT_REASON, as_of=inp.as_of)

    # The name it was first recorded under: it audits the run's pauses too now.
    @activity.defn(name="allocations.audit_decision")
    async def audit_decision(self, inp: AuditDecisionInput) -> None:
        """One of the run's own messages, audited once: its plan approved or rejected (the update
        handlers), the run paused or resumed (the signal handlers)."""
        ctx = inp.context
        entry = AuditInput(actor=inp.actor, action=inp.action, entity_type=RUN_ENTITY_TYPE, entity_id=ctx.run_id,
                           reason=inp.reason or ctx.reason, workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                           idempotency_key=inp.key or f"{ctx.run_id}|{inp.action}", customer_id=ctx.customer_id)
        entry.after = {"decision": str(entry.action)}
        async with self.pool.acquire() as conn:
            await write_audit(conn, entry)

    @activity.defn(name="allocations.page")
    async def page(self, inp: PageInput) -> PageResult:
        cp = resume(PageCheckpoint, PageCheckpoint(cursor=inp.cursor))
        async with self.pool.acquire() as conn, Heartbeater(cp) as hb:
            try:
                await self._entities(conn, inp, cp, hb)
            except asyncio.CancelledError:
                # The run was paused (or the worker is stopping): the entity in hand was finished,
                # and the page stops there, saying how far it got.
                log.info("allocations: page cancelled after %d entities", cp.done)
                return PageResult(next_cursor=cp.cursor, counts=cp.counts, sample=cp.sample, paused=cp.paused,
                                  interrupted=True)
        more = cp.done >= inp.page_size
        return PageResult(next_cursor=cp.cursor if more else None, counts=cp.counts, sample=cp.sample,
                          paused=cp.paused)

    async def _entities(self, conn: asyncpg.Connection, inp: PageInput, cp: PageCheckpoint,
                        hb: Heartbeater[PageCheckpoint]) -> None:
        rows = await _rows(conn, inp, cp)
        plan_keys = await _plan_keys(conn, inp) if inp.apply_planned_only else None
        e = Entity(ctx=inp.context, write=False, plan_keys=plan_keys, cp=cp)
        for n, r in enumerate(rows):
            if n % PAUSE_CHECK_EVERY == 0:
                e.write, paused = await _may_write(conn, inp)
                cp.paused = cp.paused or paused
            # A cancellation never lands inside an entity: its check and fix finish (commit or roll
            # back as a whole, a few statements), are recorded, and only then does the page stop.
            one = asyncio.ensure_future(self._entity(conn, inp, r, e))
            try:
                await asyncio.shield(one)
            except asyncio.CancelledError:
                await one
                hb.record(cp)
                raise
            hb.record(cp)

    async def _entity(self, conn: asyncpg.Connection, inp: PageInput, r: asyncpg.Record, e: Entity) -> None:
        cp = e.cp
        entity = r["allocation_id"] if inp.phase == Phase.ALLOCATIONS else r["session_id"]
        try:
            if inp.phase == Phase.ALLOCATIONS:
                await check_allocation(conn, r, e)
            else:
                await check_payment(conn, self.stripe, payment_row(r), e)
        except asyncpg.IntegrityConstraintViolationError as err:
            # Deterministic: the database refuses this fix (its transaction rolled back).
            # Reported, and the run goes on; retrying the page could not succeed.
            log.warning("allocations: fix of %s refused by the database: %s", entity, err)
            cp.counts.fix_errors += 1
            sample(cp.sample, f"[fix_error] {entity}: {type(err).__name__}: {err}", MAX_SAMPLE)
        cp.cursor = Cursor(customer_id=r["customer_id"], entity_id=entity)
        cp.done += 1


async def _rows(conn: asyncpg.Connection, inp: PageInput, cp: PageCheckpoint) -> list[asyncpg.Record]:
    """The rest of the page: the entities after the checkpoint's cursor."""
    after = (cp.cursor.customer_id, cp.cursor.entity_id) if cp.cursor else (None, None)
    if inp.phase == Phase.ALLOCATIONS:
        return await conn.fetch(
            f"""
            SELECT {ALLOCATION_COLUMNS} FROM billing.allocations
            WHERE ($1::text IS NULL OR (customer_id, allocation_id) > ($1, $2::text))
              AND ($3::text IS NULL OR customer_id = $3)
            ORDER BY customer_id, allocation_id LIMIT $4
            """, *after, inp.context.customer_id, inp.page_size - cp.done)
    return await conn.fetch(
        f"""
        SELECT {PAYMENT_COLUMNS} FROM billing.payment_sessions
        WHERE (status = 'failed_reconcile' OR (status = 'completed' AND ledger_entry_id IS NULL))
          AND ($1::text IS NULL OR (customer_id, session_id) > ($1, $2::text))
          AND ($3::text IS NULL OR customer_id = $3)
        ORDER BY customer_id, session_id LIMIT $4
        """, *after, inp.context.customer_id, inp.page_size - cp.done)


async def _plan_keys(conn: asyncpg.Connection, inp: PageInput) -> set[str]:
    rows = await conn.fetch(
        "SELECT finding_key FROM billing.allocation_findings WHERE run_id = $1 AND status = $2",
        inp.context.run_id, FindingStatus.PROPOSED.value)
    return {r["finding_key"] for r in rows}


async def _may_write(conn: asyncpg.Connection, inp: PageInput) -> tuple[bool, bool]:
    """(write, paused): corrective writes only in apply mode, and neither while the run is paused
    nor while auto-healing is."""
    if inp.context.mode != Mode.APPLY:
        return False, False
    paused = inp.run_paused or await switch.paused(conn)
    return not paused, paused
