"""What is wrong with one allocation (or one payment session) and what fixes it. Pure functions
over typed rows, no IO: the activities read the rows, call these, and apply the findings; the
same functions run again inside the apply transaction, so a plan is re-checked before it is
applied (docs/durations.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from allocations.pricing import auto_usage_id, billable_slices, cost_until
from allocations.types import (
    RUNNING_STATUSES,
    AllocationStatus,
    Finding,
    FindingAction,
    FindingKind,
    PaymentStatus,
    TimeUnit,
)


@dataclass(frozen=True)
class AllocationRow:
    allocation_id: str
    customer_id: str
    resource_class: str
    status: AllocationStatus
    activated_at: datetime
    released_at: datetime | None = None


@dataclass(frozen=True)
class UsageRow:
    usage_id: str
    start_time: datetime
    end_time: datetime | None = None
    last_billed_at: datetime | None = None
    accrued_cost_minor: int | None = None


@dataclass(frozen=True)
class RateRow:
    resource_class: str
    effective_from: datetime
    rate_minor: Decimal
    unit: TimeUnit
    meter: str
    meter_unit: TimeUnit


@dataclass(frozen=True)
class PaymentRow:
    session_id: str
    customer_id: str
    stripe_checkout_session_id: str | None
    amount_minor: int
    status: PaymentStatus
    ledger_entry_id: int | None


@dataclass(frozen=True)
class CheckoutState:
    """What Stripe says about a checkout session (None when Stripe has no such session)."""

    complete: bool
    paid: bool
    amount_total: int | None


def rate_for(resource_class: str, at: datetime, rates: list[RateRow]) -> RateRow | None:
    """The rate in effect at `at` for the class: the latest effective_from <= at."""
    best: RateRow | None = None
    for r in rates:
        if r.resource_class == resource_class and r.effective_from <= at and (
                best is None or r.effective_from > best.effective_from):
            best = r
    return best


def plan_allocation(
    alloc: AllocationRow, records: list[UsageRow], debits: dict[str, dict[int, int]], rates: list[RateRow],
    as_of: datetime,
) -> list[Finding]:
    """Findings of one allocation, in the order they must be applied: open or close a record
    first, then bill every record's missing slices (a record closed or opened by this plan is
    billed as it will be)."""
    out: list[Finding] = []
    base: dict[str, Any] = {"customer_id": alloc.customer_id, "allocation_id": alloc.allocation_id}
    open_ = [r for r in records if r.end_time is None]
    planned = list(records)

    if alloc.status in RUNNING_STATUSES and not open_:
        ends = [r.end_time for r in records if r.end_time is not None]
        start = max([alloc.activated_at, *ends])
        uid = auto_usage_id(alloc.allocation_id, start)
        out.append(Finding(
            key=f"{FindingKind.MISSING_OPEN_USAGE.value}:{alloc.allocation_id}", kind=FindingKind.MISSING_OPEN_USAGE,
            action=FindingAction.OPEN_USAGE, entity_id=alloc.allocation_id, at=start, usage_id=uid,
            detail=f"allocation {alloc.status.value} since {alloc.activated_at.isoformat()} has no open usage "
                   f"record: open {uid} at {start.isoformat()}", **base))
        planned.append(UsageRow(usage_id=uid, start_time=start))

    if alloc.status not in RUNNING_STATUSES:
        for r in open_:
            floor = max(r.start_time, r.last_billed_at or r.start_time)
            flagged = alloc.released_at is None
            at = max(as_of if flagged else alloc.released_at or as_of, floor)
            why = ("release time unknown: closed at the run's as_of (flagged)" if flagged
                   else f"released at {alloc.released_at.isoformat() if alloc.released_at else '?'}")
            if not flagged and alloc.released_at is not None and alloc.released_at < floor:
                why += f", before what is already billed: closed at {floor.isoformat()}"
            out.append(Finding(
                key=f"{FindingKind.ORPHAN_OPEN_USAGE.value}:{r.usage_id}", kind=FindingKind.ORPHAN_OPEN_USAGE,
                action=FindingAction.CLOSE_USAGE, entity_id=r.usage_id, at=at, flagged=flagged,
                detail=f"open while the allocation is {alloc.status.value}; {why}", **base))
            planned = [replace(p, end_time=at) if p.usage_id == r.usage_id else p for p in planned]

    for r in planned:
        out.extend(_plan_billing(alloc, r, debits.get(r.usage_id, {}), rates, as_of))
    return out


def _plan_billing(alloc: AllocationRow, r: UsageRow, posted: dict[int, int], rates: list[RateRow],
                  as_of: datetime) -> list[Finding]:
    base: dict[str, Any] = {"customer_id": alloc.customer_id, "allocation_id": alloc.allocation_id, "entity_id": r.usage_id}
    rate = rate_for(alloc.resource_class, r.start_time, rates)
    if rate is None:
        return [Finding(key=f"{FindingKind.NO_RATE.value}:{r.usage_id}", kind=FindingKind.NO_RATE,
                        action=FindingAction.REPORT,
                        detail=f"no rate for resource class {alloc.resource_class!r} at {r.start_time.isoformat()}: "
                               "cannot be billed", **base)]
    out: list[Finding] = []
    slices = billable_slices(r.start_time, r.end_time, as_of, rate.rate_minor, rate.unit, rate.meter_unit)
    expected = {s.index: s.amount_minor for s in slices}
    wrong = sorted(i for i, amount in posted.items() if i in expected and expected[i] != amount
                   or i not in expected and r.end_time is not None)
    if wrong:
        out.append(Finding(
            key=f"{FindingKind.DEBIT_MISMATCH.value}:{r.usage_id}", kind=FindingKind.DEBIT_MISMATCH,
            action=FindingAction.REPORT,
            detail=f"debit(s) of slice(s) {wrong} disagree with rate x duration "
                   f"(posted {[posted[i] for i in wrong]}, expected {[expected.get(i) for i in wrong]})", **base))
    if r.end_time is not None and r.accrued_cost_minor is not None:
        total = cost_until(rate.rate_minor, rate.unit, r.start_time, r.end_time)
        if r.accrued_cost_minor != total:
            out.append(Finding(
                key=f"{FindingKind.COST_MISMATCH.value}:{r.usage_id}", kind=FindingKind.COST_MISMATCH,
                action=FindingAction.HOLD,
                detail=f"accrued_cost_minor {r.accrued_cost_minor} != rate x duration {total} "
                       f"({rate.rate_minor}/{rate.unit.value} x {r.end_time - r.start_time}): held, not billed",
                **base))
            return out
    missing = [s for s in slices if s.index not in posted]
    if missing:
        kind = FindingKind.UNBILLED_CLOSED_USAGE if r.end_time is not None else FindingKind.SLICES_DUE
        amount = sum(s.amount_minor for s in missing)
        out.append(Finding(
            key=f"{kind.value}:{r.usage_id}", kind=kind, action=FindingAction.POST_DEBITS, slices=missing,
            detail=f"{len(missing)} slice(s) without a debit ({missing[0].start.isoformat()} .. "
                   f"{missing[-1].end.isoformat()}): {amount} minor units, "
                   f"{sum((s.quantity for s in missing), Decimal(0))} {rate.meter}", **base))
    return out


def plan_payment(s: PaymentRow, credit_id: int | None, stripe: CheckoutState | None) -> Finding | None:
    """Payment drift: `failed_reconcile`, or `completed` with no linked ledger credit. A credit
    that exists is linked; otherwise one is created, but only for a checkout Stripe confirms
    (complete, paid, same amount) or, without a Stripe id, a session the app marked completed."""
    drift = s.status == PaymentStatus.FAILED_RECONCILE or (
        s.status == PaymentStatus.COMPLETED and s.ledger_entry_id is None)
    if not drift:
        return None
    base: dict[str, Any] = {"customer_id": s.customer_id, "entity_id": s.session_id}
    what = f"payment session {s.status.value}" + (" without a ledger credit" if s.ledger_entry_id is None else "")
    if credit_id is not None:
        return Finding(key=f"{FindingKind.PAYMENT_DRIFT.value}:{s.session_id}", kind=FindingKind.PAYMENT_DRIFT,
                       action=FindingAction.LINK_CREDIT,
                       detail=f"{what}: link the existing ledger credit {credit_id}", **base)
    if s.stripe_checkout_session_id is not None:
        problem = None
        if stripe is None:
            problem = "Stripe has no such checkout session"
        elif not (stripe.complete and stripe.paid):
            problem = "Stripe says the checkout is not complete and paid"
        elif stripe.amount_total is not None and stripe.amount_total != s.amount_minor:
            problem = f"Stripe's amount_total {stripe.amount_total} != amount_minor {s.amount_minor}"
        if problem:
            return Finding(key=f"{FindingKind.PAYMENT_NOT_PAID.value}:{s.session_id}",
                           kind=FindingKind.PAYMENT_NOT_PAID, action=FindingAction.REPORT,
                           detail=f"{what}: {problem}; nothing credited", **base)
    elif s.status != PaymentStatus.COMPLETED:
        return Finding(key=f"{FindingKind.PAYMENT_NOT_PAID.value}:{s.session_id}", kind=FindingKind.PAYMENT_NOT_PAID,
                       action=FindingAction.REPORT,
                       detail=f"{what}: no Stripe checkout to verify it against; nothing credited", **base)
    return Finding(key=f"{FindingKind.PAYMENT_DRIFT.value}:{s.session_id}", kind=FindingKind.PAYMENT_DRIFT,
                   action=FindingAction.CREATE_CREDIT,
                   detail=f"{what}: credit {s.amount_minor} minor units once and link it", **base)
