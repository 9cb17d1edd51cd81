"""ReconcileAllocations' activities (Postgres, and Stripe to verify checkouts).

A page activity walks allocations (or payment drift candidates) by a (customer, id) keyset
cursor and heartbeats a checkpoint after every entity, so a retried page resumes after the last
one done. Per entity it plans with `allocations.policy` (read-only); in apply mode it then fixes
the entity in ONE transaction: lock its rows, read them again, plan again (a plan is never
applied blind), write the fixes under their deterministic keys (unique source in the ledger,
request_id in usage_events, one open record per allocation), and write one audit row per fix in
the same transaction. A worker killed at any instant therefore leaves every fix either wholly
committed (and seen as done by the retry) or not at all: no double debit, no missing one.

While auto-healing is paused (autoheal/switch.py) an apply run is observe-only: checked at the
start of every page and every PAUSE_CHECK_EVERY entities."""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from allocations.contract import (
    USAGE_COLUMNS,
    allocation_row,
    close_usage,
    load_debits,
    load_rates,
    load_usage,
    open_usage,
    payment_row,
    post_slices,
    usage_row,
)
from allocations.policy import (
    AllocationRow,
    CheckoutState,
    PaymentRow,
    RateRow,
    plan_allocation,
    plan_payment,
    rate_for,
)
from allocations.pricing import cost_until, credit_source
from allocations.types import (
    FIXING_ACTIONS,
    MAX_SAMPLE,
    AuditDecisionInput,
    Counts,
    Cursor,
    Finding,
    FindingAction,
    FindingStatus,
    PageCheckpoint,
    PageInput,
    PageResult,
    Phase,
    RunContext,
    StartInput,
)
from autoheal import switch
from billing import correlation
from billing.stripe_gateway import StripeGateway
from common.types import Mode

log = logging.getLogger("billing.allocations")

PAUSE_CHECK_EVERY = 25
ALLOCATION_COLUMNS = "allocation_id, customer_id, resource_class, status, activated_at, released_at"
PAYMENT_COLUMNS = "session_id, customer_id, stripe_checkout_session_id, amount_minor, status, ledger_entry_id"
CLOSE_FLAG_UNKNOWN_RELEASE = "release_time_unknown"
ACTOR_OPENED_BY = "reconcile"


class ErrorType(StrEnum):
    """`ApplicationError.type` of this job's permanent failures."""

    UNKNOWN_CUSTOMER = "UnknownCustomer"


# ---------------------------------------------------------------------------- audit


async def audit(
    conn: asyncpg.Connection, ctx: RunContext, *, action: str, entity_type: str, entity_id: str,
    customer_id: str | None, before: dict[str, Any] | None, after: dict[str, Any] | None, key: str,
    reason: str | None = None,
) -> bool:
    """One audit row per corrective write (in the write's transaction); the key makes a retried
    activity audit once. The one place this job writes billing.audit_log: swap for the shared
    audit writer when there is one."""
    inserted = await conn.fetchval(
        """
        INSERT INTO billing.audit_log
            (actor, action, entity_type, entity_id, before, after, reason, workflow_id, run_id,
             correlation_id, idempotency_key, customer_id)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
        """,
        ctx.actor, action, entity_type, entity_id, before, after, reason or ctx.reason, ctx.run_id,
        ctx.workflow_run_id, correlation.current() or ctx.run_id, key, customer_id)
    return inserted is not None


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


# ---------------------------------------------------------------------------- activities


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
                          mode=req.mode, actor=req.actor, reason=req.reason or "allocations reconciliation",
                          as_of=inp.as_of)

    @activity.defn(name="allocations.audit_decision")
    async def audit_decision(self, inp: AuditDecisionInput) -> None:
        """The approval or rejection of a plan (the workflow's update handler calls this)."""
        ctx = inp.context
        async with self.pool.acquire() as conn:
            await audit(conn, ctx.model_copy(update={"actor": inp.actor}), action=inp.action,
                        entity_type="allocations_run", entity_id=ctx.run_id, customer_id=ctx.customer_id,
                        before=None, after={"decision": inp.action}, key=f"{ctx.run_id}|{inp.action}",
                        reason=inp.reason)

    @activity.defn(name="allocations.page")
    async def page(self, inp: PageInput) -> PageResult:
        cp = PageCheckpoint(cursor=inp.cursor)
        details = activity.info().heartbeat_details
        if details:
            cp = PageCheckpoint.model_validate(details[0])
        async with self.pool.acquire() as conn:
            if inp.phase == Phase.ALLOCATIONS:
                rows = await conn.fetch(
                    f"""
                    SELECT {ALLOCATION_COLUMNS} FROM billing.allocations
                    WHERE ($1::text IS NULL OR (customer_id, allocation_id) > ($1, $2::text))
                      AND ($3::text IS NULL OR customer_id = $3)
                    ORDER BY customer_id, allocation_id LIMIT $4
                    """, *_cursor_args(cp.cursor), inp.context.customer_id, inp.page_size - cp.done)
            else:
                rows = await conn.fetch(
                    f"""
                    SELECT {PAYMENT_COLUMNS} FROM billing.payment_sessions
                    WHERE (status = 'failed_reconcile' OR (status = 'completed' AND ledger_entry_id IS NULL))
                      AND ($1::text IS NULL OR (customer_id, session_id) > ($1, $2::text))
                      AND ($3::text IS NULL OR customer_id = $3)
                    ORDER BY customer_id, session_id LIMIT $4
                    """, *_cursor_args(cp.cursor), inp.context.customer_id, inp.page_size - cp.done)
            plan_keys = await self._plan_keys(conn, inp) if inp.apply_planned_only else None
            write = False
            for n, r in enumerate(rows):
                if n % PAUSE_CHECK_EVERY == 0:
                    write, paused = await _may_write(conn, inp.context)
                    cp.paused = cp.paused or paused
                entity = r["allocation_id"] if inp.phase == Phase.ALLOCATIONS else r["session_id"]
                try:
                    if inp.phase == Phase.ALLOCATIONS:
                        await self._allocation(conn, inp.context, r, write, plan_keys, cp)
                    else:
                        await self._payment(conn, inp.context, payment_row(r), write, plan_keys, cp)
                except asyncpg.IntegrityConstraintViolationError as e:
                    # Deterministic: the database refuses this fix (its transaction rolled back).
                    # Reported, and the run goes on; retrying the page could not succeed.
                    log.warning("allocations: fix of %s refused by the database: %s", entity, e)
                    cp.counts.fix_errors += 1
                    if len(cp.sample) < MAX_SAMPLE:
                        cp.sample.append(f"[fix_error] {entity}: {type(e).__name__}: {e}")
                cp.cursor = Cursor(customer_id=r["customer_id"], entity_id=entity)
                cp.done += 1
                activity.heartbeat(cp.model_dump(mode="json"))
        more = cp.done >= inp.page_size
        return PageResult(next_cursor=cp.cursor if more else None, counts=cp.counts, sample=cp.sample,
                          paused=cp.paused)

    async def _plan_keys(self, conn: asyncpg.Connection, inp: PageInput) -> set[str]:
        rows = await conn.fetch(
            "SELECT finding_key FROM billing.allocation_findings WHERE run_id = $1 AND status = $2",
            inp.context.run_id, FindingStatus.PROPOSED.value)
        return {r["finding_key"] for r in rows}

    # ------------------------------------------------------------------ allocations

    async def _allocation(self, conn: asyncpg.Connection, ctx: RunContext, r: asyncpg.Record, write: bool,
                          plan_keys: set[str] | None, cp: PageCheckpoint) -> None:
        alloc = allocation_row(r)
        records = (await load_usage(conn, [alloc.allocation_id]))[alloc.allocation_id]
        debits = await load_debits(conn, [u.usage_id for u in records])
        rates = await load_rates(conn, [alloc.resource_class])
        findings = plan_allocation(alloc, records, debits, rates, ctx.as_of)
        c = cp.counts
        c.allocations_scanned += 1
        c.usage_records_scanned += len(records)
        if plan_keys is None:  # the apply pass of a plan counts fixes, not findings again
            _count_findings(c, findings)
        if not findings:
            return
        fixes = [f for f in findings if f.action in FIXING_ACTIONS and (plan_keys is None or f.key in plan_keys)]
        if not write or not fixes:
            await _record(conn, ctx, findings, _status_without_write(ctx, write), plan_keys, cp)
            return
        async with conn.transaction():
            # Lock, read again, plan again: what is applied is what is true now.
            locked = await conn.fetchrow(
                f"SELECT {ALLOCATION_COLUMNS} FROM billing.allocations WHERE allocation_id = $1 FOR UPDATE",
                alloc.allocation_id)
            alloc = allocation_row(locked)
            records = [usage_row(u) for u in await conn.fetch(
                f"SELECT {USAGE_COLUMNS} FROM billing.duration_usage WHERE allocation_id = $1 "
                "ORDER BY start_time, usage_id FOR UPDATE", alloc.allocation_id)]
            debits = await load_debits(conn, [u.usage_id for u in records])
            fresh = plan_allocation(alloc, records, debits, rates, ctx.as_of)
            fresh_keys = {f.key for f in fresh}
            statuses: dict[str, FindingStatus] = {}
            stop = False
            for f in fresh:
                if f.action not in FIXING_ACTIONS:
                    statuses[f.key] = _status_without_write(ctx, True, f)
                    continue
                if plan_keys is not None and f.key not in plan_keys:
                    continue  # not in the approved plan: the next run finds it again
                if stop:
                    statuses[f.key] = FindingStatus.SKIPPED
                    c.skipped_stale += 1
                    continue
                done = await self._fix_allocation(conn, ctx, alloc, rates, f, c)
                statuses[f.key] = FindingStatus.APPLIED if done else FindingStatus.SKIPPED
                c.skipped_stale += int(not done)
                stop = not done  # a step that found its work done by someone else: re-plan next run
            for f in findings:  # planned outside, gone inside: stale
                if f.key not in fresh_keys and f.action in FIXING_ACTIONS:
                    statuses[f.key] = FindingStatus.SKIPPED
                    c.skipped_stale += 1
            by_key = {f.key: f for f in [*findings, *fresh]}
            for key, status in statuses.items():
                await _store(conn, ctx, by_key[key], status)
                _sample(cp, by_key[key], status)

    async def _fix_allocation(self, conn: asyncpg.Connection, ctx: RunContext, alloc: AllocationRow,
                              rates: list[RateRow],
                              f: Finding, c: Counts) -> bool:
        if f.action == FindingAction.OPEN_USAGE:
            assert f.usage_id is not None and f.at is not None
            if not await open_usage(conn, f.usage_id, alloc.allocation_id, f.at, opened_by=ACTOR_OPENED_BY):
                return False
            c.usage_opened += 1
            await self._audited(conn, ctx, f, "allocations.open_usage", "duration_usage", f.usage_id, None,
                                {"start_time": _iso(f.at), "allocation_status": alloc.status.value},
                                f"allocations:open:{f.usage_id}", c)
            return True
        if f.action == FindingAction.CLOSE_USAGE:
            assert f.at is not None
            row = await conn.fetchrow(
                "SELECT start_time, end_time FROM billing.duration_usage WHERE usage_id = $1", f.entity_id)
            rate = rate_for(alloc.resource_class, row["start_time"], rates)
            accrued = cost_until(rate.rate_minor, rate.unit, row["start_time"], f.at) if rate else None
            if not await close_usage(conn, f.entity_id, f.at, accrued_cost_minor=accrued, closed_by=ACTOR_OPENED_BY,
                                     close_flag=CLOSE_FLAG_UNKNOWN_RELEASE if f.flagged else None):
                return False
            c.usage_closed += 1
            c.closed_at_unknown_release += int(f.flagged)
            await self._audited(conn, ctx, f, "allocations.close_usage", "duration_usage", f.entity_id,
                                {"end_time": None},
                                {"end_time": _iso(f.at), "accrued_cost_minor": accrued, "flagged": f.flagged,
                                 "allocation_status": alloc.status.value},
                                f"allocations:close:{f.entity_id}", c)
            return True
        # POST_DEBITS
        row = await conn.fetchrow("SELECT start_time FROM billing.duration_usage WHERE usage_id = $1", f.entity_id)
        if row is None:
            return False
        rate = rate_for(alloc.resource_class, row["start_time"], rates)
        assert rate is not None  # the policy reports no_rate instead of planning debits
        posted = await post_slices(conn, usage_id=f.entity_id, customer_id=alloc.customer_id, meter=rate.meter,
                                   slices=f.slices, actor=ctx.actor, reason=f"{f.kind.value}: {ctx.reason}",
                                   workflow_id=ctx.run_id)
        if posted.debits == 0:
            return False
        c.debits_posted += posted.debits
        c.amount_debited_minor += posted.amount_minor
        c.usage_events_written += posted.events
        first, last = f.slices[0].index, f.slices[-1].index
        await self._audited(conn, ctx, f, "allocations.post_debits", "duration_usage", f.entity_id,
                            None,
                            {"slices": [s.index for s in f.slices], "debits": posted.debits,
                             "amount_minor": posted.amount_minor, "usage_events": posted.events,
                             "meter": rate.meter, "last_billed_at": _iso(posted.last_billed_at)},
                            f"allocations:bill:{f.entity_id}:{first}-{last}", c)
        return True

    async def _audited(self, conn: asyncpg.Connection, ctx: RunContext, f: Finding, action: str, entity_type: str,
                       entity_id: str, before: dict[str, Any] | None, after: dict[str, Any], key: str,
                       c: Counts) -> None:
        after = {**after, "finding": f.kind.value, "allocation_id": f.allocation_id}
        if await audit(conn, ctx, action=action, entity_type=entity_type, entity_id=entity_id,
                       customer_id=f.customer_id, before=before, after=after, key=key,
                       reason=f"{f.kind.value}: {f.detail}"):
            c.fixes_applied += 1

    # ------------------------------------------------------------------ payments

    async def _checkout(self, s: PaymentRow) -> CheckoutState | None:
        assert s.stripe_checkout_session_id is not None
        obj = await self.stripe.retrieve("checkout.session", s.stripe_checkout_session_id)
        if obj is None:
            return None
        total = obj.get("amount_total")
        return CheckoutState(complete=obj.get("status") == "complete",
                             paid=obj.get("payment_status") in ("paid", "no_payment_required"),
                             amount_total=int(total) if total is not None else None)

    async def _credit_id(self, conn: asyncpg.Connection, session_id: str) -> int | None:
        return await conn.fetchval(
            "SELECT id FROM billing.duration_ledger WHERE kind = 'credit' AND (payment_session_id = $1 OR source = $2)",
            session_id, credit_source(session_id))

    async def _payment(self, conn: asyncpg.Connection, ctx: RunContext, s: PaymentRow, write: bool,
                       plan_keys: set[str] | None, cp: PageCheckpoint) -> None:
        c = cp.counts
        c.payment_sessions_scanned += 1
        credit = await self._credit_id(conn, s.session_id)
        stripe = await self._checkout(s) if credit is None and s.stripe_checkout_session_id else None
        f = plan_payment(s, credit, stripe)
        if f is None:
            return
        if plan_keys is None:
            _count_findings(c, [f])
        fixable = f.action in FIXING_ACTIONS and (plan_keys is None or f.key in plan_keys)
        if not write or not fixable:
            await _record(conn, ctx, [f], _status_without_write(ctx, write), plan_keys, cp)
            return
        async with conn.transaction():
            locked = await conn.fetchrow(
                f"SELECT {PAYMENT_COLUMNS} FROM billing.payment_sessions WHERE session_id = $1 FOR UPDATE",
                s.session_id)
            fresh = plan_payment(payment_row(locked), await self._credit_id(conn, s.session_id), stripe)
            if fresh is None or fresh.action not in FIXING_ACTIONS:
                c.skipped_stale += 1
                await _store(conn, ctx, fresh or f, FindingStatus.SKIPPED)
                _sample(cp, fresh or f, FindingStatus.SKIPPED)
                return
            credit_id = await self._credit_id(conn, s.session_id)
            created = credit_id is None
            if created:
                credit_id = await conn.fetchval(
                    """
                    INSERT INTO billing.duration_ledger (customer_id, kind, amount_minor, source, payment_session_id,
                                                         actor, reason, workflow_id)
                    VALUES ($1, 'credit', $2, $3, $4, $5, $6, $7) RETURNING id
                    """, s.customer_id, locked["amount_minor"], credit_source(s.session_id), s.session_id,
                    ctx.actor, f"{fresh.kind.value}: {ctx.reason}", ctx.run_id)
                c.credits_created += 1
            else:
                c.credits_linked += 1
            await conn.execute(
                """
                UPDATE billing.payment_sessions SET ledger_entry_id = $2, status = 'completed',
                       completed_at = coalesce(completed_at, now()), updated_at = now()
                 WHERE session_id = $1
                """, s.session_id, credit_id)
            await self._audited(
                conn, ctx, fresh, "allocations.credit_payment" if created else "allocations.link_credit",
                "payment_session", s.session_id,
                {"status": locked["status"], "ledger_entry_id": locked["ledger_entry_id"]},
                {"status": "completed", "ledger_entry_id": credit_id, "amount_minor": locked["amount_minor"],
                 "created": created}, f"allocations:payment:{s.session_id}", c)
            await _store(conn, ctx, fresh, FindingStatus.APPLIED)
            _sample(cp, fresh, FindingStatus.APPLIED)


# ---------------------------------------------------------------------------- helpers


def _cursor_args(cursor: Cursor | None) -> tuple[str | None, str | None]:
    return (cursor.customer_id, cursor.entity_id) if cursor else (None, None)


async def _may_write(conn: asyncpg.Connection, ctx: RunContext) -> tuple[bool, bool]:
    """(write, paused): corrective writes only in apply mode and while auto-healing is not paused."""
    if ctx.mode != Mode.APPLY:
        return False, False
    paused = await switch.paused(conn)
    return not paused, paused


def _count_findings(c: Counts, findings: list[Finding]) -> None:
    for f in findings:
        setattr(c, f.kind.value, getattr(c, f.kind.value) + 1)
        c.fixable += int(f.action in FIXING_ACTIONS)


def _status_without_write(ctx: RunContext, write: bool, f: Finding | None = None) -> FindingStatus:
    if f is not None and f.action == FindingAction.HOLD:
        return FindingStatus.HELD
    if f is not None and f.action == FindingAction.REPORT:
        return FindingStatus.UNFIXABLE
    return FindingStatus.PROPOSED if ctx.mode == Mode.PLAN else FindingStatus.OBSERVED


async def _record(conn: asyncpg.Connection, ctx: RunContext, findings: list[Finding], default: FindingStatus,
                  plan_keys: set[str] | None, cp: PageCheckpoint) -> None:
    for f in findings:
        status = _status_without_write(ctx, False, f) if f.action not in FIXING_ACTIONS else default
        if plan_keys is not None and f.action in FIXING_ACTIONS:
            if f.key not in plan_keys:
                continue  # not part of the approved plan: the next run finds it again
            status = FindingStatus.PROPOSED  # approved but paused: still to do
        await _store(conn, ctx, f, status)
        _sample(cp, f, status)


async def _store(conn: asyncpg.Connection, ctx: RunContext, f: Finding, status: FindingStatus) -> None:
    await conn.execute(
        """
        INSERT INTO billing.allocation_findings (run_id, finding_key, kind, customer_id, allocation_id, entity_id,
                                                 action, status, detail)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (run_id, finding_key) DO UPDATE SET status = EXCLUDED.status, detail = EXCLUDED.detail,
                                                       updated_at = now()
        """, ctx.run_id, f.key, f.kind.value, f.customer_id, f.allocation_id, f.entity_id, f.action.value,
        status.value, f.detail)


def _sample(cp: PageCheckpoint, f: Finding, status: FindingStatus) -> None:
    if len(cp.sample) < MAX_SAMPLE:
        cp.sample.append(f"[{status.value}] {f.line()}")
