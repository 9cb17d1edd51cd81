"""What plan_allocation and plan_payment decide for each drift (allocations/policy.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from allocations.policy import (
    AllocationRow,
    CheckoutState,
    PaymentRow,
    RateRow,
    UsageRow,
    plan_allocation,
    plan_payment,
)
from allocations.pricing import auto_usage_id
from allocations.types import AllocationStatus, FindingAction, FindingKind, PaymentStatus, TimeUnit

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RATES = [RateRow("gpu", datetime(2026, 1, 1, tzinfo=UTC), Decimal(6), TimeUnit.MINUTE, "gpu_minutes", TimeUnit.MINUTE),
         RateRow("gpu", datetime(2026, 11, 20, 11, tzinfo=UTC), Decimal(9), TimeUnit.MINUTE, "gpu_minutes",
                 TimeUnit.MINUTE)]


def alloc(status: AllocationStatus, hours_ago: float = 3, released_ago: float | None = None) -> AllocationRow:
    return AllocationRow("a1", "c1", "gpu", status, AS_OF - timedelta(hours=hours_ago),
                         AS_OF - timedelta(hours=released_ago) if released_ago is not None else None)


def kinds(findings) -> list[tuple[FindingKind, FindingAction]]:
    return [(f.kind, f.action) for f in findings]


def test_running_allocation_without_open_usage_is_opened_at_activation_or_after_the_last_record():
    for status in (AllocationStatus.ACTIVE, AllocationStatus.RELEASING, AllocationStatus.RELEASE_FAILED):
        [f] = plan_allocation(alloc(status), [], {}, RATES, AS_OF)
        assert (f.kind, f.action, f.at) == (FindingKind.MISSING_OPEN_USAGE, FindingAction.OPEN_USAGE,
                                           AS_OF - timedelta(hours=3))
        assert f.usage_id == auto_usage_id("a1", f.at)
    closed = UsageRow("u0", AS_OF - timedelta(hours=3), AS_OF - timedelta(hours=2))
    out = plan_allocation(alloc(AllocationStatus.ACTIVE), [closed], {}, RATES, AS_OF)
    assert out[0].at == AS_OF - timedelta(hours=2)


def test_orphan_closes_at_release_time_or_at_as_of_flagged_and_is_then_billed():
    rec = UsageRow("u1", AS_OF - timedelta(hours=3))
    out = plan_allocation(alloc(AllocationStatus.RELEASED, released_ago=1), [rec], {}, RATES, AS_OF)
    assert kinds(out) == [(FindingKind.ORPHAN_OPEN_USAGE, FindingAction.CLOSE_USAGE),
                          (FindingKind.UNBILLED_CLOSED_USAGE, FindingAction.POST_DEBITS)]
    assert out[0].at == AS_OF - timedelta(hours=1) and not out[0].flagged
    assert out[1].slices[0].amount_minor == 120 * 6  # the rate at the record's start, not today's
    unknown = plan_allocation(alloc(AllocationStatus.RELEASED), [rec], {}, RATES, AS_OF)
    assert unknown[0].at == AS_OF and unknown[0].flagged


def test_closed_record_missing_debits_is_unbilled_and_posted_slices_are_not_planned_again():
    rec = UsageRow("u1", AS_OF - timedelta(days=1, hours=3), AS_OF - timedelta(hours=1))
    a = alloc(AllocationStatus.RELEASED, hours_ago=27, released_ago=1)
    [f] = plan_allocation(a, [rec], {}, RATES, AS_OF)
    assert f.kind == FindingKind.UNBILLED_CLOSED_USAGE and [s.index for s in f.slices] == [0, 1]
    [g] = plan_allocation(a, [rec], {"u1": {0: f.slices[0].amount_minor}}, RATES, AS_OF)
    assert [s.index for s in g.slices] == [1]
    assert plan_allocation(a, [rec], {"u1": {s.index: s.amount_minor for s in f.slices}}, RATES, AS_OF) == []


def test_accrued_cost_disagreeing_with_rate_times_duration_is_held_not_billed():
    rec = UsageRow("u1", AS_OF - timedelta(hours=3), AS_OF - timedelta(hours=2), accrued_cost_minor=1)
    out = plan_allocation(alloc(AllocationStatus.RELEASED, released_ago=2), [rec], {}, RATES, AS_OF)
    assert kinds(out) == [(FindingKind.COST_MISMATCH, FindingAction.HOLD)]
    ok = UsageRow("u1", AS_OF - timedelta(hours=3), AS_OF - timedelta(hours=2), accrued_cost_minor=360)
    assert kinds(plan_allocation(alloc(AllocationStatus.RELEASED, released_ago=2), [ok], {}, RATES, AS_OF)) == [
        (FindingKind.UNBILLED_CLOSED_USAGE, FindingAction.POST_DEBITS)]


def test_wrong_posted_debit_and_missing_rate_are_reported():
    rec = UsageRow("u1", AS_OF - timedelta(hours=3), AS_OF - timedelta(hours=2))
    out = plan_allocation(alloc(AllocationStatus.RELEASED, released_ago=2), [rec], {"u1": {0: 5}}, RATES, AS_OF)
    assert kinds(out) == [(FindingKind.DEBIT_MISMATCH, FindingAction.REPORT)]
    other = AllocationRow("a2", "c1", "tpu", AllocationStatus.RELEASED, rec.start_time, rec.end_time)
    assert kinds(plan_allocation(other, [rec], {}, RATES, AS_OF)) == [(FindingKind.NO_RATE, FindingAction.REPORT)]


def test_payment_drift_links_an_existing_credit_or_creates_one_only_when_stripe_confirms():
    failed = PaymentRow("ps1", "c1", "cs_1", 2500, PaymentStatus.FAILED_RECONCILE, None)
    assert plan_payment(failed, 17, None).action == FindingAction.LINK_CREDIT
    paid = CheckoutState(complete=True, paid=True, amount_total=2500)
    assert plan_payment(failed, None, paid).action == FindingAction.CREATE_CREDIT
    for stripe in (None, CheckoutState(True, False, 2500), CheckoutState(True, True, 9999)):
        f = plan_payment(failed, None, stripe)
        assert (f.kind, f.action) == (FindingKind.PAYMENT_NOT_PAID, FindingAction.REPORT)
    unlinked = PaymentRow("ps2", "c1", None, 700, PaymentStatus.COMPLETED, None)
    assert plan_payment(unlinked, None, None).action == FindingAction.CREATE_CREDIT
    assert plan_payment(PaymentRow("ps3", "c1", None, 700, PaymentStatus.COMPLETED, 4), 4, None) is None
    assert plan_payment(PaymentRow("ps4", "c1", None, 700, PaymentStatus.OPEN, None), None, None) is None
