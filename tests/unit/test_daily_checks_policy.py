"""The daily checks' conclusions (checks/policy.py) and their gauges (checks/metrics.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from checks import metrics as checks_metrics
from checks import policy
from checks.policy import (
    ActiveComparison,
    DayTypeTally,
    StaleCounter,
    UsageWithoutCounter,
    WaitingEvent,
    tally_key,
)
from checks.types import CheckName, DailyChecksInput

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def test_active_subscriptions_name_each_side_and_bound_the_list():
    compared = ActiveComparison(local=3, stripe=4, only_stripe=2, only_local=1,
                                only_stripe_sample=[("sub_new", None), ("sub_past_due", "past_due")],
                                only_local_sample=["sub_only_here"])
    r = policy.active_subscriptions(compared, sample=20)
    assert not r.passed and r.findings == 3
    assert r.figures == {"local": 3, "stripe": 4, "only_local": 1, "only_stripe": 2}
    assert r.summary == "3 active locally, 4 in Stripe; 3 subscriptions differ"
    assert [(i.key, i.detail) for i in r.items] == [
        ("sub_new", "active in Stripe; missing from billing.subscriptions"),
        ("sub_past_due", "active in Stripe; past_due in billing.subscriptions"),
        ("sub_only_here", "active in billing.subscriptions, not active in Stripe")]
    assert len(policy.active_subscriptions(compared, sample=2).items) == 2
    ok = policy.active_subscriptions(ActiveComparison(1, 1, 0, 0, [], []), sample=20)
    assert ok.passed and ok.findings == 0 and ok.summary == "1 active locally, 1 in Stripe"


def test_webhook_gaps_are_named_by_day_and_type():
    day = date(2026, 11, 27)
    tallies = {tally_key(day, "invoice.paid"): DayTypeTally(stripe=3, missing=2, missing_ids=["evt_1", "evt_2"]),
               tally_key(day, "customer.created"): DayTypeTally(stripe=5),
               tally_key(day + timedelta(days=1), "invoice.paid"): DayTypeTally(stripe=4, missing=4,
                                                                                 missing_ids=["evt_3"])}
    inbox = {tally_key(day, "invoice.paid"): 1, tally_key(day, "customer.created"): 5}
    r = policy.webhook_gaps(tallies, inbox, since=NOW - timedelta(days=30), until=NOW, sample=20)
    assert not r.passed and r.findings == 6
    assert r.figures == {"stripe_events": 12, "inbox_events": 6, "missing": 6, "gap_day_types": 2}
    assert [(i.key, i.detail) for i in r.items] == [
        ("2026-11-27 invoice.paid", "3 in Stripe, 1 in the inbox, 2 missing: evt_1, evt_2"),
        # More missing than the ids kept: the list says so.
        ("2026-11-28 invoice.paid", "4 in Stripe, 0 in the inbox, 4 missing: evt_3, ...")]
    clean = policy.webhook_gaps({tally_key(day, "x.y"): DayTypeTally(stripe=1)}, {}, since=NOW, until=NOW, sample=5)
    assert clean.passed and clean.summary.endswith("all in the inbox")


def test_counters_and_inbox_checks():
    r = policy.usage_without_counter(
        7, [UsageWithoutCounter("acme", "api_requests", date(2026, 11, 1), Decimal("12.5"), 3)], since=date(2026, 10, 1))
    assert not r.passed and r.findings == 7 and r.items[0].key == "acme api_requests 2026-11-01"
    assert "3 usage events (12.5)" in r.items[0].detail
    assert policy.usage_without_counter(0, [], since=date(2026, 10, 1)).passed

    seen = NOW - timedelta(days=3)
    r = policy.stale_counters(2, 10, [StaleCounter("acme", "api_requests", date(2026, 11, 1), Decimal(5), seen),
                                      StaleCounter("globex", "api_requests", date(2026, 11, 1), Decimal(0), None)],
                              days=2)
    assert not r.passed and r.summary == "2 of 10 current counters not reconciled within 2 days"
    assert [i.detail for i in r.items] == ["value 5; last reconciled 2026-11-26 06:00 UTC",
                                           "value 0; last reconciled never"]
    assert policy.stale_counters(0, 10, [], days=2).passed

    oldest = NOW - timedelta(hours=5)
    r = policy.inbox_backlog({"failed": 1, "received": 2}, oldest,
                             [WaitingEvent("evt_9", "invoice.paid", "failed", oldest, 10, "boom")], minutes=60, now=NOW)
    assert not r.passed and r.findings == 3 and r.figures["oldest_age_seconds"] == 5 * 3600
    assert r.items[0].detail == "invoice.paid failed since 2026-11-29 01:00 UTC, 10 attempts: boom"
    assert policy.inbox_backlog({}, None, [], minutes=60, now=NOW).passed


def test_a_check_that_could_not_run_fails_with_its_cause():
    r = policy.could_not_run(CheckName.WEBHOOK_GAPS, "Stripe refused the API key")
    assert not r.passed and r.error == "Stripe refused the API key" and r.summary.startswith("could not run")


def test_input_bounds():
    with pytest.raises(ValueError):
        DailyChecksInput(webhook_days=31)  # beyond Stripe's event retention
    with pytest.raises(ValueError):
        DailyChecksInput(stale_counter_days=0)
    assert DailyChecksInput(grace_minutes=0).grace_minutes == 0


def test_gauges_come_from_the_last_results(monkeypatch):
    published: dict[tuple[str, str], float] = {}
    monkeypatch.setattr(checks_metrics.metrics, "set_gauge",
                        lambda name, value, labels=None: published.__setitem__((name, (labels or {}).get("check", "")),
                                                                               value))
    finished = NOW
    checks_metrics.publish([
        {"check_name": "webhook_gaps", "passed": False, "findings": 4, "finished_at": finished},
        {"check_name": "inbox_backlog", "passed": True, "findings": 0, "finished_at": finished - timedelta(days=1)}])
    assert published[("billing_daily_check_failed", "webhook_gaps")] == 1.0
    assert published[("billing_daily_check_findings", "webhook_gaps")] == 4.0
    assert published[("billing_daily_check_failed", "inbox_backlog")] == 0.0
    # Never run yet: not failed (BillingDailyChecksMissing covers it), 0 findings.
    assert published[("billing_daily_check_failed", "stale_counters")] == 0.0
    assert published[("billing_daily_checks_last_run_timestamp", "")] == finished.timestamp()
    published.clear()
    checks_metrics.publish([])
    assert published[("billing_daily_checks_last_run_timestamp", "")] == 0.0
