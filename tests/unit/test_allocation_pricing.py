"""Billing slices and the cumulative rounding rule (allocations/pricing.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from allocations.pricing import (
    auto_usage_id,
    billable_slices,
    cost_until,
    debit_source,
    quantity_until,
    request_id,
)
from allocations.types import TimeUnit

T = datetime(2026, 10, 30, 22, 15, 0, 500000, tzinfo=UTC)


def test_slices_cut_at_every_utc_midnight_without_gap_or_overlap():
    end = T + timedelta(days=3, hours=5)
    s = billable_slices(T, end, end, Decimal(1), TimeUnit.SECOND, TimeUnit.SECOND)
    assert [x.index for x in s] == [0, 1, 2, 3, 4]  # Oct 30, 31, Nov 1, 2, 3
    assert s[0].start == T and s[-1].end == end
    assert all(a.end == b.start for a, b in zip(s, s[1:], strict=False))
    assert datetime(2026, 11, 1, tzinfo=UTC) in [x.start for x in s]  # the period boundary is a cut
    assert all(x.start.date() == (x.end - timedelta(microseconds=1)).date() for x in s)


@pytest.mark.parametrize("rate,unit", [(Decimal("7.3"), TimeUnit.HOUR), (Decimal("0.017"), TimeUnit.SECOND),
                                       (Decimal(6), TimeUnit.MINUTE), (Decimal("0.4"), TimeUnit.MINUTE)])
def test_slices_add_up_to_rate_times_duration_rounded_once(rate, unit):
    end = T + timedelta(days=30, seconds=17, microseconds=250000)
    s = billable_slices(T, end, end, rate, unit, TimeUnit.MINUTE)
    exact = rate * Decimal((end - T) / timedelta(microseconds=1)) / Decimal(1_000_000) / {
        TimeUnit.SECOND: 1, TimeUnit.MINUTE: 60, TimeUnit.HOUR: 3600}[unit]
    assert sum(x.amount_minor for x in s) == int(exact + Decimal("0.5"))
    assert sum(x.quantity for x in s) == (Decimal((end - T) / timedelta(microseconds=1)) / 60_000_000).quantize(
        Decimal("0.000001"))


def test_rounding_is_half_up_on_the_cumulative_total():
    # 1 minor unit per minute: 30 s -> 0.5 -> 1; 29.999999 s -> 0.
    assert cost_until(Decimal(1), TimeUnit.MINUTE, T, T + timedelta(seconds=30)) == 1
    assert cost_until(Decimal(1), TimeUnit.MINUTE, T, T + timedelta(seconds=29, microseconds=999999)) == 0
    assert quantity_until(TimeUnit.MINUTE, T, T + timedelta(seconds=20)) == Decimal("0.333333")
    assert quantity_until(TimeUnit.MINUTE, T, T + timedelta(seconds=40)) == Decimal("0.666667")


def test_open_records_bill_complete_days_only():
    as_of = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    s = billable_slices(T, None, as_of, Decimal(1), TimeUnit.HOUR, TimeUnit.HOUR)
    assert [x.end for x in s] == [datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC),
                                  datetime(2026, 11, 2, tzinfo=UTC)]
    # Started today: nothing complete yet.
    assert billable_slices(as_of - timedelta(hours=1), None, as_of, Decimal(1), TimeUnit.HOUR, TimeUnit.HOUR) == []
    # Slices billed while open are the same slices once the record is closed.
    end = as_of + timedelta(hours=3)
    closed = billable_slices(T, end, end, Decimal(1), TimeUnit.HOUR, TimeUnit.HOUR)
    assert closed[:3] == s


def test_zero_length_records_have_no_slice_and_ids_are_deterministic():
    assert billable_slices(T, T, T, Decimal(5), TimeUnit.SECOND, TimeUnit.SECOND) == []
    assert request_id("u1", 3) == "dur:u1:3" and debit_source("u1", 3) == "debit:u1:3"
    assert auto_usage_id("a1", T) == auto_usage_id("a1", T) != auto_usage_id("a1", T + timedelta(microseconds=1))
