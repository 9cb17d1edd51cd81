"""Billing periods from subscription items (billing/periods.py), the closed-period rule
(reconcile/adjust.py) and the scan with periods (reconcile/scan.py). Pure; worked numbers in
docs/reconciliation.md "Billing periods" and "Invoice adjustments"."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.periods import ItemPeriod, add_months, push_timestamp, push_window
from billing.policy import FindingKind
from billing.pricing import Price
from reconcile.adjust import ClosedPeriod, adjustment_identifier, choose_kind, plan_closed_period
from reconcile.plans import AdjustmentKind, CounterCorrection, InvoiceAdjustment, StripeCorrection
from reconcile.scan import (
    BatchRows,
    CounterRow,
    Customer,
    LedgerDay,
    ScanPolicy,
    Summaries,
    plan_batch,
)
from reconcile.types import DiscrepancyStatus, WriteMode

D = Decimal
H = timedelta(hours=1)
GRACE = timedelta(hours=1)


def at(d: str, hour: int = 0, minute: int = 0) -> datetime:
    return datetime.fromisoformat(d).replace(hour=hour, minute=minute, tzinfo=UTC)


# Anchored on the 15th: current period Nov 15 - Dec 15, the previous one Oct 15 - Nov 15.
ITEM = ItemPeriod(meter_id="mtr_1", start=at("2026-11-15"), end=at("2026-12-15"), anchor_day=15)


def test_periods_step_by_the_anchor():
    assert ITEM.period_of(date(2026, 11, 20)) == (date(2026, 11, 15), date(2026, 12, 15))
    assert ITEM.period_of(date(2026, 11, 14)) == (date(2026, 10, 15), date(2026, 11, 15))
    assert ITEM.period_of(date(2027, 1, 1)) == (date(2026, 12, 15), date(2027, 1, 15))
    assert add_months(date(2026, 1, 31), 1, 31) == date(2026, 2, 28)
    assert add_months(date(2026, 2, 28), 1, 31) == date(2026, 3, 31)
    weekly = ItemPeriod("m", at("2026-11-16"), at("2026-11-23"), interval="week")
    assert weekly.period_of(date(2026, 11, 10)) == (date(2026, 11, 9), date(2026, 11, 16))


def test_push_window_open_grace_and_closed():
    day = date(2026, 11, 14)  # the previous period's last day
    # 30 minutes after the period ended, no invoice in the mirror: grace (the 1 h setting).
    w = push_window(day, at("2026-11-15", 0, 30), ITEM, GRACE)
    assert w is not None and not w.closed
    ts = push_timestamp(day, at("2026-11-15", 0, 30), w)
    assert ts == at("2026-11-14", 12)  # noon of the day: inside the old period
    # Within 5 minutes of the finalization: closed, so the push cannot miss the invoice.
    assert push_window(day, at("2026-11-15", 0, 56), ITEM, GRACE).closed
    # The draft says when it finalizes (72 h grace): still open a day later.
    draft = ItemPeriod("mtr_1", ITEM.start, ITEM.end, anchor_day=15, previous_invoice_status="draft",
                       previous_finalizes_at=at("2026-11-18"))
    assert not push_window(day, at("2026-11-16"), draft, GRACE).closed
    # The mirror knows the invoice final: closed whatever the clock says.
    final = ItemPeriod("mtr_1", ITEM.start, ITEM.end, anchor_day=15, previous_invoice_status="open",
                       previous_finalizes_at=at("2026-11-18"))
    w = push_window(day, at("2026-11-15", 0, 10), final, GRACE)
    assert "final" in w.closed and push_timestamp(day, at("2026-11-15", 0, 10), w) is None
    # Older periods are closed; the current period is open.
    assert "closed billing period" in push_window(date(2026, 10, 10), at("2026-11-15", 0, 10), ITEM, GRACE).closed
    assert not push_window(date(2026, 11, 20), at("2026-11-21"), ITEM, GRACE).closed


def test_the_boundary_day_pushes_into_the_period_still_open():
    item = ItemPeriod("mtr_1", at("2026-11-15", 14), at("2026-12-15", 14), anchor_day=15)
    w = push_window(date(2026, 11, 15), at("2026-11-16"), item, GRACE)
    assert push_timestamp(date(2026, 11, 15), at("2026-11-16"), w) == at("2026-11-15", 14)


PRICE = Price.from_stripe({"id": "price_u", "currency": "usd", "unit_amount_decimal": "2"})


def closed(**kw) -> ClosedPeriod:
    base = dict(customer_id="c1", stripe_customer_id="cus_1", meter="api", stripe_invoice_id="in_1",
                invoice_status="paid", currency="usd", period_start=at("2026-10-15"),
                period_end=at("2026-11-15"), billed=D(1000), adjusted=D(0), ledger=D(1500), price=PRICE,
                creditable=2000)
    base.update(kw)
    return ClosedPeriod(**base)


def test_the_documented_rule():
    assert choose_kind(D(5), 10, "paid", 0) == AdjustmentKind.INVOICE_ITEM
    assert choose_kind(D(-5), 10, "paid", 10) == AdjustmentKind.CREDIT_NOTE
    assert choose_kind(D(-5), 10, "open", 10) == AdjustmentKind.CREDIT_NOTE
    assert choose_kind(D(-5), 11, "paid", 10) == AdjustmentKind.BALANCE_CREDIT  # past creditable
    assert choose_kind(D(-5), 10, "uncollectible", 10) == AdjustmentKind.BALANCE_CREDIT
    assert choose_kind(D(-5), 10, "void", 10) is None


def test_under_billing_is_an_invoice_item_in_plan_mode_only():
    f = plan_closed_period(closed(), WriteMode.PLAN, "run-1")
    assert f is not None and f.status == DiscrepancyStatus.PROPOSED
    assert (f.adjust_quantity, f.adjust_amount, f.currency) == (D(500), 1000, "usd")
    assert isinstance(f.plan, InvoiceAdjustment) and f.plan.adjustment == AdjustmentKind.INVOICE_ITEM
    assert f.plan.amount == 1000 and "run-1" in f.plan.description and "in_1" in f.plan.description
    assert f.key == "adjust|c1|api|in_1" and f.kind == FindingKind.NEEDS_INVOICE_ADJUSTMENT
    applied = plan_closed_period(closed(), WriteMode.APPLY, "run-1")
    assert applied.status == DiscrepancyStatus.UNFIXABLE and applied.plan is None and applied.adjust_amount == 1000
    # Once adjusted, the period agrees: nothing more.
    assert plan_closed_period(closed(adjusted=D(500)), WriteMode.PLAN, "run-2") is None


def test_over_billing_and_the_identifier():
    f = plan_closed_period(closed(ledger=D(700)), WriteMode.PLAN, "r")
    assert f.plan.adjustment == AdjustmentKind.CREDIT_NOTE and f.adjust_amount == -600 and f.plan.amount == 600
    void = plan_closed_period(closed(ledger=D(700), invoice_status="void"), WriteMode.PLAN, "r")
    assert void.status == DiscrepancyStatus.UNFIXABLE and void.plan is None and "void" in void.detail
    # Same period, same state: same identifier (another run plans the very same adjustment).
    assert adjustment_identifier(closed(), AdjustmentKind.INVOICE_ITEM) == f"{plan_closed_period(closed(), WriteMode.PLAN, 'x').plan.identifier}"
    assert adjustment_identifier(closed(ledger=D(1501)), AdjustmentKind.INVOICE_ITEM) != adjustment_identifier(
        closed(), AdjustmentKind.INVOICE_ITEM)
    unpriced = plan_closed_period(closed(price=None, price_error="tiers not read"), WriteMode.PLAN, "r")
    assert unpriced.status == DiscrepancyStatus.UNFIXABLE and "tiers not read" in unpriced.detail


def policy(now: datetime, start: date, end: date, mode: WriteMode = WriteMode.APPLY) -> ScanPolicy:
    return ScanPolicy(window_start=start, window_end=end, meters=("api",), meter_filter=(),
                      epsilon=D("0.005"), settle=timedelta(seconds=60), auto_approve_over_reporting=False,
                      write_mode=mode, now=now, grace=GRACE, run_id="run-1")


def test_counters_follow_each_customers_own_periods():
    # c1 anchored on the 15th, c2 on the 3rd; c2 has a calendar-month counter the app kept.
    c2_item = ItemPeriod("mtr_1", at("2026-11-03"), at("2026-12-03"), anchor_day=3)
    rows = BatchRows(
        customers=[Customer("c1", "cus_1"), Customer("c2", "cus_2")],
        ledger_days=[LedgerDay("c1", "api", date(2026, 11, 14), D(7)), LedgerDay("c1", "api", date(2026, 11, 16), D(5)),
                     LedgerDay("c2", "api", date(2026, 11, 2), D(4)), LedgerDay("c2", "api", date(2026, 11, 16), D(6))],
        counters=[CounterRow("c1", "api", date(2026, 11, 15), date(2026, 12, 15), D(0), quota=D(4)),
                  CounterRow("c2", "api", date(2026, 11, 1), date(2026, 12, 1), D(10))],
        items={("c1", "api"): ITEM, ("c2", "api"): c2_item})
    now = at("2026-11-17")
    plan = plan_batch(rows, Summaries(values={("c1", "api"): {date(2026, 11, 14): D(7), date(2026, 11, 16): D(5)},
                                              ("c2", "api"): {date(2026, 11, 2): D(4), date(2026, 11, 16): D(6)}}),
                      policy(now, date(2026, 11, 1), date(2026, 11, 17)))
    repairs = {f.key: f for f in plan.findings if isinstance(f.plan, CounterCorrection)}
    c1 = repairs["counter|c1|api|2026-11-15"]
    assert c1.ledger == D(5) and c1.over_quota_transition  # 0 -> 5 crosses the quota of 4
    assert repairs["counter|c1|api|2026-10-15"].plan.counter.period_end == date(2026, 11, 15)
    assert repairs["counter|c2|api|2026-11-03"].ledger == D(6)
    assert repairs["counter|c2|api|2026-10-03"].ledger == D(4)
    # The app's calendar-month counter is compared over its own month (10 = 4 + 6): kept.
    assert "counter|c2|api|2026-11-01" not in repairs
    assert plan.counts.over_quota_transitions == 1


def test_grace_drift_is_pushed_into_the_old_period_and_closed_days_are_judged_per_invoice():
    rows = BatchRows(
        customers=[Customer("c1", "cus_1")],
        ledger_days=[LedgerDay("c1", "api", date(2026, 11, 14), D(9)), LedgerDay("c1", "api", date(2026, 11, 10), D(3))],
        items={("c1", "api"): ITEM})
    summaries = Summaries(values={("c1", "api"): {date(2026, 11, 14): D(4)}})
    in_grace = plan_batch(rows, summaries, policy(at("2026-11-15", 0, 20), date(2026, 11, 10), date(2026, 11, 15)))
    pushes = {f.usage_day: f.plan.push for f in in_grace.findings if isinstance(f.plan, StripeCorrection)}
    assert pushes[date(2026, 11, 14)].value == D(5)
    assert pushes[date(2026, 11, 14)].event_timestamp < ITEM.start
    # After the grace: no push; the days are `needs_invoice_adjustment` until the invoice is
    # mirrored, then judged once per invoice (one `adjust|` finding, not one per day).
    late = plan_batch(rows, summaries, policy(at("2026-11-15", 2), date(2026, 11, 10), date(2026, 11, 15)))
    assert {f.kind for f in late.findings if f.usage_day} == {FindingKind.NEEDS_INVOICE_ADJUSTMENT}
    judged = BatchRows(customers=rows.customers, ledger_days=rows.ledger_days, items=rows.items,
                       closed=[closed(meter="api", billed=D(4), ledger=D(12))])
    per_invoice = plan_batch(judged, summaries, policy(at("2026-11-15", 2), date(2026, 11, 10), date(2026, 11, 15),
                                                       WriteMode.PLAN))
    adjust = [f for f in per_invoice.findings if f.kind == FindingKind.NEEDS_INVOICE_ADJUSTMENT]
    assert [f.key for f in adjust] == ["adjust|c1|api|in_1"] and adjust[0].adjust_quantity == D(8)
    assert adjust[0].status == DiscrepancyStatus.PROPOSED and per_invoice.counts.needs_invoice_adjustment == 1


@pytest.mark.parametrize("mode", [WriteMode.OBSERVE, WriteMode.APPLY])
def test_adjustments_never_write_outside_plan_mode(mode):
    f = plan_closed_period(closed(), mode, "r")
    assert f.plan is None and f.status in (DiscrepancyStatus.OBSERVED, DiscrepancyStatus.UNFIXABLE)
