"""The revenue rule and its per-invoice findings (revenue/rules.py), and the range validation
of RevenueInput."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import ValidationError

from revenue.rules import Side, StripeSide, classify, paid_on
from revenue.types import MAX_RANGE_DAYS, FindingKind, RevenueInput, day_bounds

AT = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)


def stripe(**kw) -> StripeSide:
    base = dict(status="paid", amount_paid=1000, paid_at=AT, currency="usd", amount_due=1000, payments_paid=1,
                payments_amount=1000)
    return StripeSide(**{**base, **kw})


def local(**kw) -> Side:
    return Side(**{**dict(status="paid", amount_paid=1000, paid_at=AT, currency="usd"), **kw})


def kinds(found) -> list[FindingKind]:
    return [f.kind for f in found]


def test_agreeing_sides_have_no_finding():
    assert classify(local(), stripe()) == []
    assert classify(local(refunds={"re_1": 300}), stripe(refunds={"re_1": 300})) == []


def test_missing_locally_and_missing_in_stripe():
    assert kinds(classify(None, stripe())) == [FindingKind.MISSING_LOCALLY]
    found = classify(local(), None)
    assert kinds(found) == [FindingKind.MISSING_IN_STRIPE] and not found[0].fixable


def test_a_voided_invoice_the_mirror_counts_as_paid_differs_in_status_and_amount():
    found = classify(local(), stripe(status="void", amount_paid=0, paid_at=None, payments_amount=0))
    assert kinds(found) == [FindingKind.STATUS_DIFFERS, FindingKind.AMOUNT_DIFFERS]
    assert all(f.fixable for f in found)


def test_a_paid_at_on_another_day_is_a_status_finding():
    assert kinds(classify(local(paid_at=AT - timedelta(days=1)), stripe())) == [FindingKind.STATUS_DIFFERS]


def test_a_refund_the_mirror_lacks_differs_in_amount_and_is_fixable():
    found = classify(local(), stripe(refunds={"re_1": 400}))
    assert kinds(found) == [FindingKind.AMOUNT_DIFFERS] and found[0].fixable
    # A refund only the mirror has is not ours to delete: reported, not fixable.
    assert not classify(local(refunds={"re_x": 400}), stripe())[0].fixable


def test_paid_twice_is_more_paid_through_payments_than_asked_and_never_fixable():
    found = classify(local(), stripe(payments_paid=2, payments_amount=2000))
    assert kinds(found) == [FindingKind.PAID_TWICE] and not found[0].fixable
    # Two partial payments that add up to the invoice are not paid twice.
    assert classify(local(), stripe(payments_paid=2, payments_amount=1000)) == []


def test_out_of_band_is_what_no_invoice_payment_covers():
    assert stripe(payments_paid=0, payments_amount=0).out_of_band == 1000
    assert stripe().out_of_band == 0
    assert stripe(status="open", amount_paid=0, payments_amount=0).out_of_band == 0


def test_paid_on_counts_a_paid_invoice_on_its_paid_at_day_only():
    start, end = day_bounds(AT.date())
    assert paid_on(local(), start, end) == 1000
    assert paid_on(local(), end, end + timedelta(days=1)) == 0
    assert paid_on(local(status="void"), start, end) == 0 and paid_on(None, start, end) == 0


@pytest.mark.parametrize("fields, says", [
    ({"since": date(2026, 11, 5), "until": date(2026, 11, 1)}, "after until"),
    ({"since": date(2026, 1, 1), "until": date(2026, 1, 1) + timedelta(days=MAX_RANGE_DAYS)}, "at most"),
    ({"since": date(2026, 11, 1)}, "give both"),
    ({"customer": "acme"}, "every customer"),
    ({"mode": "plan"}, "not plan"),
    ({"days": 0}, "greater than or equal"),
])
def test_bad_input_is_refused(fields, says):
    with pytest.raises(ValidationError, match=says):
        RevenueInput.model_validate(fields)


def test_the_window_defaults_to_the_last_complete_days_and_refuses_the_future():
    today = date(2026, 11, 29)
    assert RevenueInput().window(today) == (date(2026, 11, 22), date(2026, 11, 28))
    assert RevenueInput(since=today, until=today).window(today) == (today, today)
    with pytest.raises(ValueError, match="in the future"):
        RevenueInput(since=today, until=today + timedelta(days=1)).window(today)
