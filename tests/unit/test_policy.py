"""The drift policy (billing/policy.py), branch by branch. Pure: no Temporal, no IO.

Spec: DESIGN.md "Usage reconciliation semantics". Key = (customer, meter, UTC day);
L = ledger, S = Stripe's summary, P = our live pushes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.policy import (
    CANCEL_WINDOW,
    TOLERANCE,
    FindingKind,
    Push,
    classify_counter,
    classify_stripe_key,
    correction_identifier,
    diff_pct,
    fallback_compensation_identifier,
    normalize,
    to_stripe_value,
)

NOW = datetime(2026, 11, 15, 8, 0, 0, tzinfo=UTC)
TODAY = NOW.date()
DAY = TODAY - timedelta(days=3)
SETTLE = timedelta(minutes=10)
EPS = Decimal("0.005")
D = Decimal


def push(ident: str, value: str, status: str = "sent", *, sent_ago: timedelta | None = timedelta(hours=2),
         cancelled_ago: timedelta | None = None, kind: str = "delta") -> Push:
    return Push(
        identifier=ident, value=D(value), status=status, kind=kind,
        planned_at=NOW - (sent_ago or timedelta(hours=3)) - timedelta(seconds=1),
        sent_at=None if sent_ago is None else NOW - sent_ago,
        cancelled_at=None if cancelled_ago is None else NOW - cancelled_ago)


def classify(ledger: str, stripe: str, pushes: list[Push] = (), *, day: date = DAY, auto: bool = False,
             epsilon: Decimal = EPS, now: datetime = NOW):
    return classify_stripe_key(
        customer_id="cus_1", meter="api_requests", day=day, ledger=D(ledger), stripe=D(stripe),
        pushes=list(pushes), now=now, settle=SETTLE, epsilon=epsilon,
        auto_approve_over_reporting=auto)


# ---------------------------------------------------------------------------- in agreement


def test_ok_confirms_settled_sent_pushes_only():
    settled = push("old", "6", sent_ago=timedelta(hours=1))
    fresh = push("fresh", "4", sent_ago=timedelta(minutes=1))  # still inside the settle window
    confirmed = push("done", "0", "confirmed")
    f = classify("10", "10", [settled, fresh, confirmed])
    assert f.kind == FindingKind.OK
    assert f.confirm == ["old"]
    assert f.push is None and f.cancel == [] and f.mark_failed == []
    assert f.pushed == D(10)


def test_ok_within_float_tolerance():
    f = classify("2.5", "2.4999999")
    assert f.kind == FindingKind.OK
    f = classify("2.5", str(D("2.5") - 2 * TOLERANCE))
    assert f.kind != FindingKind.OK


def test_ok_with_nothing_pushed_confirms_nothing():
    f = classify("0", "0")
    assert f.kind == FindingKind.OK and f.confirm == []


# ---------------------------------------------------------------------------- pending


def test_pending_when_unsettled_push_covers_the_gap():
    f = classify("10", "4", [push("a", "4", sent_ago=timedelta(hours=1)),
                             push("b", "6", sent_ago=timedelta(minutes=2))])
    assert f.kind == FindingKind.PENDING
    assert f.unsettled == D(6)
    assert f.push is None and f.mark_failed == [] and f.cancel == []


def test_planned_push_is_always_unsettled():
    f = classify("10", "0", [push("a", "10", "planned", sent_ago=None)])
    assert f.kind == FindingKind.PENDING


def test_recent_cancellation_is_pending_until_stripe_reflects_it():
    # S still holds a cancellation of 5 made a minute ago: once it lands S = 10 = L.
    f = classify("10", "15", [push("a", "10", "confirmed"),
                              push("b", "5", "cancelled", cancelled_ago=timedelta(minutes=1))])
    assert f.kind == FindingKind.PENDING
    assert f.unsettled == D(-5)
    assert f.pushed == D(10)  # cancelled pushes are not live


def test_old_cancellation_no_longer_unsettled():
    f = classify("10", "15", [push("a", "10", "confirmed"),
                              push("b", "5", "cancelled", cancelled_ago=timedelta(hours=1))])
    assert f.kind == FindingKind.OVER_REPORTED


def test_pending_beyond_epsilon_is_flagged_but_needs_no_approval():
    f = classify("100", "0", [push("a", "100", sent_ago=timedelta(seconds=30))])
    assert f.kind == FindingKind.PENDING
    assert f.beyond_epsilon is True
    assert f.needs_approval is False


# ---------------------------------------------------------------------------- under-reported


def test_under_reported_pushes_the_gap_as_a_delta():
    f = classify("10", "4", [push("a", "4", "confirmed")])
    assert f.kind == FindingKind.UNDER_REPORTED
    assert f.push is not None
    assert f.push.value == D(6)
    assert f.push.kind == "delta"
    assert f.push.replaces is None
    assert f.push.event_timestamp == datetime.combine(DAY, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    assert f.mark_failed == [] and f.cancel == []
    assert f.needs_approval is False  # under-reporting never waits for approval
    # seq = 1: one outbox row already exists for the key.
    assert f.push.identifier == correction_identifier("cus_1", "api_requests", DAY, "delta", D(4), D(4), D(10), 1)


def test_under_reported_with_partial_unsettled_push_pushes_only_what_is_missing():
    # L - P = 10 - 7 = 3 is missing; 7 is in flight.
    f = classify("10", "0", [push("a", "7", sent_ago=timedelta(minutes=1))])
    assert f.kind == FindingKind.UNDER_REPORTED
    assert f.push.value == D(3)
    assert f.mark_failed == []


def test_lost_push_after_settle_is_marked_failed_and_repushed():
    lost = push("lost", "6", sent_ago=timedelta(hours=1))
    f = classify("10", "4", [push("a", "4", "confirmed", sent_ago=timedelta(hours=3)), lost])
    assert f.kind == FindingKind.LOST_PUSH
    assert f.mark_failed == ["lost"]
    assert f.push.kind == "repush"
    assert f.push.value == D(6)
    assert f.push.replaces == "lost"


def test_lost_push_inside_settle_window_is_only_pending():
    f = classify("10", "4", [push("a", "4", "confirmed"), push("lost", "6", sent_ago=timedelta(minutes=9))])
    assert f.kind == FindingKind.PENDING
    assert f.mark_failed == []


def test_confirmed_push_that_vanished_is_marked_failed():
    # A confirmed push that vanished later (cancelled behind our back) is lost like any other: it
    # is marked failed (so the outbox stops counting it) and re-pushed under a new identifier.
    f = classify("10", "0", [push("a", "10", "confirmed")])
    assert f.kind == FindingKind.LOST_PUSH
    assert f.mark_failed == ["a"]
    assert f.push.value == D(10) and f.push.kind == "repush" and f.push.replaces == "a"


def test_lost_push_marks_only_as_many_pushes_as_are_missing():
    # Three settled pushes of 5 (15), Stripe has 10: exactly one is lost.
    ps = [push("p1", "5", sent_ago=timedelta(hours=3)), push("p2", "5", sent_ago=timedelta(hours=2)),
          push("p3", "5", sent_ago=timedelta(hours=1))]
    f = classify("15", "10", ps)
    assert f.kind == FindingKind.LOST_PUSH
    assert f.mark_failed == ["p3"]  # the most recent first
    assert f.push.value == D(5)


# ---------------------------------------------------------------------------- over-reported


def test_over_reported_cancels_our_recent_push():
    f = classify("10", "15", [push("a", "10", "confirmed", sent_ago=timedelta(hours=5)),
                              push("dup", "5", sent_ago=timedelta(hours=1))], auto=True)
    assert f.kind == FindingKind.OVER_REPORTED
    assert f.cancel == ["dup"]
    assert f.push is None


def test_over_reported_cancel_window_is_23_hours():
    inside = push("in", "5", sent_ago=CANCEL_WINDOW - timedelta(minutes=1))
    outside = push("out", "5", sent_ago=CANCEL_WINDOW + timedelta(minutes=1))
    f = classify("0", "5", [inside], auto=True)
    assert f.cancel == ["in"] and f.push is None
    f = classify("0", "5", [outside], auto=True)
    assert f.cancel == []
    assert f.push is not None and f.push.kind == "compensation" and f.push.value == D(-5)


def test_over_reported_beyond_cancel_window_compensates():
    f = classify("10", "13", [push("a", "13", "confirmed", sent_ago=timedelta(days=2))], auto=True)
    assert f.kind == FindingKind.OVER_REPORTED
    assert f.cancel == []
    assert f.push.kind == "compensation"
    assert f.push.value == D(-3)
    assert f.push.identifier == correction_identifier(
        "cus_1", "api_requests", DAY, "compensation", D(13), D(13), D(10), 1)


def test_over_reported_cancels_what_fits_and_compensates_the_rest():
    # Excess 7: the recent 5 is cancelled, the older recent 5 would overshoot, 2 is compensated.
    f = classify("10", "17", [push("base", "7", "confirmed", sent_ago=timedelta(days=3)),
                              push("old5", "5", sent_ago=timedelta(hours=6)),
                              push("new5", "5", sent_ago=timedelta(hours=1))], auto=True)
    assert f.kind == FindingKind.OVER_REPORTED
    assert f.cancel == ["new5"]
    assert f.push.value == D(-2)


def test_over_reported_never_cancels_negative_or_unsent_pushes():
    f = classify("0", "3", [push("neg", "-2", sent_ago=timedelta(hours=1)),
                            push("plan", "5", "failed", sent_ago=timedelta(hours=1))], auto=True)
    assert f.cancel == []


@pytest.mark.parametrize(
    ("ledger", "stripe", "beyond"),
    [("1000", "1004", False),  # 0.4% <= 0.5%
     ("1000", "1005", False),  # exactly epsilon is not beyond
     ("1000", "1006", True),
     ("0", "0.004", False),  # max(L, 1) is the denominator: 0.004 / 1
     ("0", "1", True)],
)
def test_over_reporting_beyond_epsilon_needs_approval(ledger, stripe, beyond):
    held = classify(ledger, stripe)
    assert held.kind == FindingKind.OVER_REPORTED
    assert held.beyond_epsilon is beyond
    assert held.needs_approval is beyond
    auto = classify(ledger, stripe, auto=True)
    assert auto.beyond_epsilon is beyond
    assert auto.needs_approval is False
    assert auto.push == held.push and auto.cancel == held.cancel  # the same plan either way


def test_under_reporting_beyond_epsilon_never_needs_approval():
    f = classify("1000", "0")
    assert f.beyond_epsilon is True
    assert f.needs_approval is False


# ---------------------------------------------------------------------------- 35-day window


@pytest.mark.parametrize("age_days", [36, 60])
def test_outside_35_days_needs_invoice_adjustment(age_days):
    for ledger, stripe in (("10", "0"), ("0", "10")):
        f = classify(ledger, stripe, day=TODAY - timedelta(days=age_days))
        assert f.kind == FindingKind.NEEDS_INVOICE_ADJUSTMENT
        assert f.push is None and f.cancel == [] and f.mark_failed == []
        assert "35-day" in f.detail


def test_day_34_days_old_is_still_pushable():
    f = classify("10", "0", day=TODAY - timedelta(days=34))
    assert f.kind == FindingKind.UNDER_REPORTED
    assert f.push.event_timestamp >= NOW - timedelta(days=35)


def test_outside_window_but_in_agreement_is_ok():
    f = classify("10", "10", day=TODAY - timedelta(days=90))
    assert f.kind == FindingKind.OK


def test_outside_window_but_pending_is_pending():
    f = classify("10", "0", [push("a", "10", sent_ago=timedelta(minutes=1))], day=TODAY - timedelta(days=40))
    assert f.kind == FindingKind.PENDING


# ---------------------------------------------------------------------------- odd values


def test_negative_ledger_is_over_reporting_compensated():
    f = classify("-5", "0", auto=True)
    assert f.kind == FindingKind.OVER_REPORTED
    assert f.push.value == D(-5)
    assert f.beyond_epsilon is True


def test_decimal_values_are_exact():
    f = classify("0.3", "0.1")
    assert f.kind == FindingKind.UNDER_REPORTED
    assert f.push.value == D("0.2")
    assert to_stripe_value(f.push.value) == "0.2"
    f = classify("0.1", "0.35", auto=True)
    assert f.push.value == D("-0.25")
    assert to_stripe_value(f.push.value) == "-0.25"


def test_diff_reports_ledger_minus_stripe():
    assert classify("3", "10").diff == D(-7)
    assert diff_pct(D(200), D(199)) == D("0.005")
    assert diff_pct(D(0), D(3)) == D(3)


# ---------------------------------------------------------------------------- identifiers


def test_normalize_and_stripe_value():
    assert to_stripe_value(D("5.000")) == "5"
    assert to_stripe_value(D("1E+3")) == "1000"
    assert to_stripe_value(D("-0")) == "0"
    assert to_stripe_value(D("0.0000001")) == "0"
    assert to_stripe_value(D("2.50")) == "2.5"
    assert normalize(D("-0.000")) == 0


def test_correction_identifier_is_deterministic_and_short():
    args = ("cus_1", "api_requests", DAY, "delta", D("4"), D("4"), D("10"))
    a = correction_identifier(*args)
    assert a == correction_identifier(*args)
    assert a.startswith("br_") and len(a) <= 100
    # The same numbers in another notation are the same correction.
    assert a == correction_identifier("cus_1", "api_requests", DAY, "delta", D("4.000"), D("4.0"), D("1E+1"))
    # Anything else changes it.
    others = {
        correction_identifier("cus_2", "api_requests", DAY, "delta", D(4), D(4), D(10)),
        correction_identifier("cus_1", "storage", DAY, "delta", D(4), D(4), D(10)),
        correction_identifier("cus_1", "api_requests", DAY + timedelta(days=1), "delta", D(4), D(4), D(10)),
        correction_identifier("cus_1", "api_requests", DAY, "repush", D(4), D(4), D(10)),
        correction_identifier("cus_1", "api_requests", DAY, "delta", D(5), D(4), D(10)),
        correction_identifier("cus_1", "api_requests", DAY, "delta", D(4), D(5), D(10)),
        correction_identifier("cus_1", "api_requests", DAY, "delta", D(4), D(4), D(11)),
        # Same numbers, but the key's outbox grew (a failed attempt): a fresh identifier.
        correction_identifier("cus_1", "api_requests", DAY, "delta", D(4), D(4), D(10), 1),
    }
    assert a not in others and len(others) == 8


def test_identifier_length_with_huge_inputs():
    ident = correction_identifier("c" * 500, "m" * 500, DAY, "compensation", D("1e15"), D("-1e15"), D("123456789.123456"))
    assert len(ident) <= 100
    fb = fallback_compensation_identifier(ident)
    assert len(fb) <= 100 and fb != ident
    assert fb == fallback_compensation_identifier(ident)


def test_identifier_accepts_values_beyond_28_digits():
    ident = correction_identifier("cus_1", "bytes", DAY, "delta", D("1e22"), D(0), D("1e22"))
    assert len(ident) <= 100


def test_same_state_plans_same_identifier_across_runs():
    ps = [push("a", "4", "confirmed")]
    first = classify("10", "4", ps, now=NOW)
    later = classify("10", "4", ps, now=NOW + timedelta(hours=1))
    assert first.push.identifier == later.push.identifier
    # After the correction landed and new usage arrived the key is in a new state: new identifier.
    ps2 = ps + [push(first.push.identifier, "6", "confirmed")]
    nxt = classify("12", "10", ps2)
    assert nxt.push.identifier != first.push.identifier


# ---------------------------------------------------------------------------- counters


def test_counter_in_agreement():
    f = classify_counter(D(10), D("10.0000001"), None, True)
    assert f.kind == FindingKind.OK and not f.needs_repair


def test_counter_drift():
    f = classify_counter(D(10), D(7), None, True)
    assert f.kind == FindingKind.COUNTER_DRIFT and f.needs_repair
    assert f.ledger == D(10) and f.counter == D(7)
    assert f.over_quota_transition is False


def test_missing_counter_with_usage_is_drift():
    f = classify_counter(D(3), None, None, True)
    assert f.kind == FindingKind.COUNTER_DRIFT and f.needs_repair


def test_missing_counter_without_usage_is_ok():
    assert classify_counter(D(0), None, None, False).kind == FindingKind.OK
    # Usage that nets to zero needs no counter either.
    assert classify_counter(D(0), None, None, True).kind == FindingKind.OK


def test_orphan_counter():
    f = classify_counter(D(0), D(55), None, False)
    assert f.kind == FindingKind.ORPHAN_COUNTER and f.needs_repair
    # A zero counter with no usage is fine.
    assert classify_counter(D(0), D(0), None, False).kind == FindingKind.OK


def test_quota_transition_upwards():
    f = classify_counter(D(120), D(60), D(100), True)
    assert f.kind == FindingKind.COUNTER_DRIFT
    assert f.over_quota_transition is True


def test_quota_transition_downwards():
    f = classify_counter(D(80), D(150), D(100), True)
    assert f.over_quota_transition is True
    orphan = classify_counter(D(0), D(150), D(100), False)
    assert orphan.kind == FindingKind.ORPHAN_COUNTER and orphan.over_quota_transition is True


@pytest.mark.parametrize(("ledger", "counter"), [("90", "60"), ("150", "120"), ("100", "50")])
def test_no_quota_transition_on_the_same_side(ledger, counter):
    # "over" means strictly above the quota: 100 of 100 is still within it.
    f = classify_counter(D(ledger), D(counter), D(100), True)
    assert f.kind == FindingKind.COUNTER_DRIFT
    assert f.over_quota_transition is False


def test_no_quota_transition_without_quota_or_without_drift():
    assert classify_counter(D(150), D(50), None, True).over_quota_transition is False
    assert classify_counter(D(150), D(150), D(100), True).over_quota_transition is False


# ---------------------------------------------------------------------------- writes in flight


def test_landed_push_plus_new_usage_waits_instead_of_compensating():
    # Our push of 100 landed within seconds (S = 100) and is still inside the settle window;
    # 0.4 more usage arrived. Read as "not landed yet", S would become 200: the two readings
    # disagree on the sign, so nothing is written now (never a -99.6 compensation).
    f = classify("100.4", "100", [push("x", "100", sent_ago=timedelta(minutes=5))], auto=True)
    assert f.kind == FindingKind.PENDING
    assert f.push is None and f.cancel == [] and f.mark_failed == []


def test_unlanded_push_plus_new_usage_pushes_only_the_new_usage():
    f = classify("100.4", "0", [push("x", "100", sent_ago=timedelta(minutes=5))])
    assert f.kind == FindingKind.UNDER_REPORTED
    assert f.push.value == D("0.4")


def test_over_reported_while_writes_are_in_flight_waits():
    # S > L but a push is in flight: cancelling or compensating now could double-correct.
    f = classify("10", "15", [push("x", "5", sent_ago=timedelta(minutes=5))], auto=True)
    assert f.kind == FindingKind.PENDING
    assert f.push is None and f.cancel == []


def test_cancellation_in_flight_does_not_push_the_cancelled_amount_again():
    # We cancelled 5 a minute ago and Stripe already applied it (S = 10 = L + 0): ok. If 2 more
    # usage arrived meanwhile, only 2 is pushed, not 7.
    f = classify("12", "10", [push("x", "5", "cancelled", cancelled_ago=timedelta(minutes=1))])
    assert f.kind == FindingKind.UNDER_REPORTED
    assert f.push.value == D(2)


def test_a_failed_attempt_gets_a_fresh_identifier_for_the_same_numbers():
    first = classify("10", "0", [])
    failed = Push(first.push.identifier, D(10), "failed", "delta", NOW - timedelta(hours=1))
    again = classify("10", "0", [failed])
    assert again.kind == FindingKind.UNDER_REPORTED
    assert again.push.identifier != first.push.identifier


def test_tolerance_is_relative_for_huge_values():
    f = classify("1000000000000.5", "1000000000000.5000001", [])
    assert f.kind == FindingKind.OK
