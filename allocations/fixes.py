"""One entity of a ReconcileAllocations page: plan it (read-only, `allocations.policy`), and in
apply mode fix it in ONE transaction: lock its rows, read them again, plan again (a plan is never
applied blind), write the fixes under their deterministic keys (unique source in the ledger,
request_id in usage_events, one open record per allocation), and write one audit row per fix
(`common.audit.write_audit`) in the same transaction. A worker killed at any instant therefore
leaves every fix either wholly committed (and seen as done by the retry) or not at all: no double
debit, no missing one.

The page activity (`allocations.activities`) walks the entities and calls `check_allocation` /
`check_payment` for each; they count into the page's checkpoint and record the findings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

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
    Counts,
    Finding,
    FindingAction,
    FindingStatus,
    PageCheckpoint,
    RunContext,
)
from billing.stripe_gateway import StripeGateway
from common.audit import AuditAction, AuditInput, write_audit
from common.paged import sample
from common.types import Mode

ALLOCATION_COLUMNS = "allocation_id, customer_id, resource_class, status, activated_at, released_at"
PAYMENT_COLUMNS = "session_id, customer_id, stripe_checkout_session_id, amount_minor, status, ledger_entry_id"
CLOSE_FLAG_UNKNOWN_RELEASE = "release_time_unknown"
ACTOR_OPENED_BY = "reconcile"


@dataclass
class Entity:
    """What checking one entity needs besides its row: the run, whether this batch may write,
    the approved plan's keys (the apply pass of a plan; None otherwise) and the page's
    checkpoint, which it counts and samples into."""

    ctx: RunContext
    write: bool
    plan_keys: set[str] | None
    cp: PageCheckpoint


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


# ---------------------------------------------------------------------------- allocations


async def check_allocation(conn: asyncpg.Connection, r: asyncpg.Record, e: Entity) -> None:
    ctx, plan_keys, c = e.ctx, e.plan_keys, e.cp.counts
    alloc = allocation_row(r)
    records = (await load_usage(conn, [alloc.allocation_id]))[alloc.allocation_id]
    debits = await load_debits(conn, [u.usage_id for u in records])
    rates = await load_rates(conn, [alloc.resource_class])
    findings = plan_allocation(alloc, records, debits, rates, ctx.as_of)
    c.allocations_scanned += 1
    c.usage_records_scanned += len(records)
    if plan_keys is None:  # the apply pass of a plan counts fixes, not findings again
        _count_findings(c, findings)
    if not findings:
        return
    fixes = [f for f in findings if f.action in FIXING_ACTIONS and (plan_keys is None or f.key in plan_keys)]
    if not e.write or not fixes:
        await _record(conn, e, findings, _status_without_write(ctx))
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
                statuses[f.key] = _status_without_write(ctx, f)
                continue
            if plan_keys is not None and f.key not in plan_keys:
                continue  # not in the approved plan: the next run finds it again
            if stop:
                statuses[f.key] = FindingStatus.SKIPPED
                c.skipped_stale += 1
                continue
            done = await _fix_allocation(conn, ctx, alloc, rates, f, c)
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
            _sample(e.cp, by_key[key], status)


async def _fix_allocation(conn: asyncpg.Connection, ctx: RunContext, alloc: AllocationRow, rates: list[RateRow],
                          f: Finding, c: Counts) -> bool:
    if f.action == FindingAction.OPEN_USAGE:
        assert f.usage_id is not None and f.at is not None
        if not await open_usage(conn, f.usage_id, alloc.allocation_id, f.at, opened_by=ACTOR_OPENED_BY):
            return False
        c.usage_opened += 1
        await _audited(conn, ctx, f, AuditAction.ALLOCATIONS_OPEN_USAGE, "duration_usage", f.usage_id, None,
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
        await _audited(conn, ctx, f, AuditAction.ALLOCATIONS_CLOSE_USAGE, "duration_usage", f.entity_id,
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
    await _audited(conn, ctx, f, AuditAction.ALLOCATIONS_POST_DEBITS, "duration_usage", f.entity_id, None,
                   {"slices": [s.index for s in f.slices], "debits": posted.debits,
                    "amount_minor": posted.amount_minor, "usage_events": posted.events,
                    "meter": rate.meter, "last_billed_at": _iso(posted.last_billed_at)},
                   f"allocations:bill:{f.entity_id}:{first}-{last}", c)
    return True


async def _audited(conn: asyncpg.Connection, ctx: RunContext, f: Finding, action: AuditAction, entity_type: str,
                   entity_id: str, before: dict[str, Any] | None, after: dict[str, Any], key: str,
                   c: Counts) -> None:
    """One audit row per fix, in the fix's transaction; the key makes a retried page audit once."""
    entry = AuditInput(
        actor=ctx.actor, action=action, entity_type=entity_type, entity_id=entity_id,
        before=before, after={**after, "finding": f.kind.value, "allocation_id": f.allocation_id},
        reason=f"{f.kind.value}: {f.detail}", workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
        idempotency_key=key, customer_id=f.customer_id)
    if await write_audit(conn, entry):
        c.fixes_applied += 1


# ---------------------------------------------------------------------------- payments


async def check_payment(conn: asyncpg.Connection, stripe: StripeGateway, s: PaymentRow, e: Entity) -> None:
    ctx, c = e.ctx, e.cp.counts
    c.payment_sessions_scanned += 1
    credit = await _credit_id(conn, s.session_id)
    checkout = await _checkout(stripe, s) if credit is None and s.stripe_checkout_session_id else None
    f = plan_payment(s, credit, checkout)
    if f is None:
        return
    if e.plan_keys is None:
        _count_findings(c, [f])
    fixable = f.action in FIXING_ACTIONS and (e.plan_keys is None or f.key in e.plan_keys)
    if not e.write or not fixable:
        await _record(conn, e, [f], _status_without_write(ctx))
        return
    async with conn.transaction():
        locked = await conn.fetchrow(
            f"SELECT {PAYMENT_COLUMNS} FROM billing.payment_sessions WHERE session_id = $1 FOR UPDATE",
            s.session_id)
        fresh = plan_payment(payment_row(locked), await _credit_id(conn, s.session_id), checkout)
        if fresh is None or fresh.action not in FIXING_ACTIONS:
            c.skipped_stale += 1
            await _store(conn, ctx, fresh or f, FindingStatus.SKIPPED)
            _sample(e.cp, fresh or f, FindingStatus.SKIPPED)
            return
        credit_id = await _credit_id(conn, s.session_id)
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
        await _audited(
            conn, ctx, fresh,
            AuditAction.ALLOCATIONS_CREDIT_PAYMENT if created else AuditAction.ALLOCATIONS_LINK_CREDIT,
            "payment_session", s.session_id,
            {"status": locked["status"], "ledger_entry_id": locked["ledger_entry_id"]},
            {"status": "completed", "ledger_entry_id": credit_id, "amount_minor": locked["amount_minor"],
             "created": created}, f"allocations:payment:{s.session_id}", c)
        await _store(conn, ctx, fresh, FindingStatus.APPLIED)
        _sample(e.cp, fresh, FindingStatus.APPLIED)


async def _checkout(stripe: StripeGateway, s: PaymentRow) -> CheckoutState | None:
    assert s.stripe_checkout_session_id is not None
    obj = await stripe.retrieve("checkout.session", s.stripe_checkout_session_id)
    if obj is None:
        return None
    total = obj.get("amount_total")
    return CheckoutState(complete=obj.get("status") == "complete",
                         paid=obj.get("payment_status") in ("paid", "no_payment_required"),
                         amount_total=int(total) if total is not None else None)


async def _credit_id(conn: asyncpg.Connection, session_id: str) -> int | None:
    return await conn.fetchval(
        "SELECT id FROM billing.duration_ledger WHERE kind = 'credit' AND (payment_session_id = $1 OR source = $2)",
        session_id, credit_source(session_id))


# ---------------------------------------------------------------------------- findings


def _count_findings(c: Counts, findings: list[Finding]) -> None:
    for f in findings:
        setattr(c, f.kind.value, getattr(c, f.kind.value) + 1)
        c.fixable += int(f.action in FIXING_ACTIONS)


def _status_without_write(ctx: RunContext, f: Finding | None = None) -> FindingStatus:
    if f is not None and f.action == FindingAction.HOLD:
        return FindingStatus.HELD
    if f is not None and f.action == FindingAction.REPORT:
        return FindingStatus.UNFIXABLE
    return FindingStatus.PROPOSED if ctx.mode == Mode.PLAN else FindingStatus.OBSERVED


async def _record(conn: asyncpg.Connection, e: Entity, findings: list[Finding], default: FindingStatus) -> None:
    """The findings of an entity that is not fixed now (dry-run, plan, paused, nothing fixable)."""
    for f in findings:
        status = _status_without_write(e.ctx, f) if f.action not in FIXING_ACTIONS else default
        if e.plan_keys is not None and f.action in FIXING_ACTIONS:
            if f.key not in e.plan_keys:
                continue  # not part of the approved plan: the next run finds it again
            status = FindingStatus.PROPOSED  # approved but paused: still to do
        await _store(conn, e.ctx, f, status)
        _sample(e.cp, f, status)


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
    sample(cp.sample, f"[{status.value}] {f.line()}", MAX_SAMPLE)
