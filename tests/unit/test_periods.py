"""Window and billing-period maths (billing/periods.py). Pure, UTC only."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from billing.periods import (
    PUSH_SAFETY_MARGIN,
    STRIPE_PAST_WINDOW,
    billing_period,
    current_period_window,
    day_start,
    days_in,
    periods_overlapping,
    push_timestamp,
)


def at(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0, us: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, us, tzinfo=UTC)


NOW = at(2026, 11, 15, 8, 30, 15, 123456)
TODAY = NOW.date()


# ---------------------------------------------------------------------------- push_timestamp


def test_today_uses_now_not_the_future():
    # Noon of today is still in the future at 08:30: never send a future timestamp.
    ts = push_timestamp(TODAY, NOW)
    assert ts == at(2026, 11, 15, 8, 30, 15)
    assert ts <= NOW and ts.tzinfo is not None


def test_today_after_noon_uses_noon():
    assert push_timestamp(TODAY, at(2026, 11, 15, 18)) == at(2026, 11, 15, 12)


def test_today_just_after_midnight():
    now = at(2026, 11, 15, 0, 0, 0, 500)
    assert push_timestamp(TODAY, now) == at(2026, 11, 15)


def test_yesterday_is_noon():
    assert push_timestamp(TODAY - timedelta(days=1), NOW) == at(2026, 11, 14, 12)


def test_future_day_is_refused():
    assert push_timestamp(TODAY + timedelta(days=1), NOW) is None


def test_34_days_old_is_noon():
    day = TODAY - timedelta(days=34)
    assert push_timestamp(day, NOW) == day_start(day) + timedelta(hours=12)


def test_35_days_old_morning_now_is_noon():
    # At 08:30 the earliest accepted instant is 35 days ago + 1 h = 09:30 of that day: noon fits.
    day = TODAY - timedelta(days=35)
    assert push_timestamp(day, NOW) == day_start(day) + timedelta(hours=12)


def test_35_days_old_afternoon_now_moves_to_the_earliest_accepted_instant():
    now = at(2026, 11, 15, 14, 0)
    day = TODAY - timedelta(days=35)
    ts = push_timestamp(day, now)
    assert ts == now - STRIPE_PAST_WINDOW + PUSH_SAFETY_MARGIN  # 15:00, 35 days ago
    assert ts.date() == day
    assert ts > now - STRIPE_PAST_WINDOW


def test_35_days_old_late_evening_now_is_refused():
    # At 23:30 the earliest accepted instant is past the end of that day.
    assert push_timestamp(TODAY - timedelta(days=35), at(2026, 11, 15, 23, 30)) is None


@pytest.mark.parametrize("hour", [0, 8, 12, 23])
def test_36_days_old_is_always_refused(hour):
    assert push_timestamp(TODAY - timedelta(days=36), at(2026, 11, 15, hour)) is None


@pytest.mark.parametrize("age", range(0, 36))
def test_every_accepted_timestamp_is_inside_its_day_and_stripes_window(age):
    for now in (at(2026, 11, 15, 0, 0, 1), NOW, at(2026, 11, 15, 23, 59, 59)):
        day = now.date() - timedelta(days=age)
        ts = push_timestamp(day, now)
        if ts is None:
            continue
        assert ts.date() == day
        assert now - STRIPE_PAST_WINDOW < ts <= now
        assert ts.microsecond == 0


# ---------------------------------------------------------------------------- periods


@pytest.mark.parametrize(
    ("day", "period"),
    [
        (date(2026, 1, 31), (date(2026, 1, 1), date(2026, 2, 1))),
        (date(2026, 2, 28), (date(2026, 2, 1), date(2026, 3, 1))),
        (date(2028, 2, 29), (date(2028, 2, 1), date(2028, 3, 1))),
        (date(2026, 4, 30), (date(2026, 4, 1), date(2026, 5, 1))),
        (date(2026, 12, 31), (date(2026, 12, 1), date(2027, 1, 1))),
        (date(2026, 12, 1), (date(2026, 12, 1), date(2027, 1, 1))),
        (date(2026, 3, 1), (date(2026, 3, 1), date(2026, 4, 1))),
    ],
)
def test_billing_period_month_ends(day, period):
    assert billing_period(day) == period


def test_every_day_of_a_year_is_in_exactly_one_period():
    d = date(2028, 1, 1)
    while d.year == 2028:
        start, end = billing_period(d)
        assert start <= d < end
        assert start.day == 1 and end.day == 1
        assert 28 <= (end - start).days <= 31
        d += timedelta(days=1)


def test_current_period_window():
    assert current_period_window(date(2026, 11, 15)) == (date(2026, 11, 1), date(2026, 11, 15))
    assert current_period_window(date(2026, 11, 1)) == (date(2026, 11, 1), date(2026, 11, 1))


def test_periods_overlapping_spans_years():
    assert periods_overlapping(date(2026, 11, 20), date(2027, 1, 3)) == [
        (date(2026, 11, 1), date(2026, 12, 1)),
        (date(2026, 12, 1), date(2027, 1, 1)),
        (date(2027, 1, 1), date(2027, 2, 1)),
    ]
    assert periods_overlapping(date(2026, 11, 1), date(2026, 11, 30)) == [(date(2026, 11, 1), date(2026, 12, 1))]


def test_days_in_is_inclusive_and_rejects_reversed_windows():
    assert days_in(date(2026, 2, 27), date(2026, 3, 1)) == [date(2026, 2, 27), date(2026, 2, 28), date(2026, 3, 1)]
    assert days_in(date(2026, 3, 1), date(2026, 3, 1)) == [date(2026, 3, 1)]
    with pytest.raises(ValueError, match="before its start"):
        days_in(date(2026, 3, 2), date(2026, 3, 1))


def test_day_start_is_utc_midnight():
    assert day_start(date(2026, 11, 15)) == at(2026, 11, 15)
    assert day_start(date(2026, 11, 15)).utcoffset() == timedelta(0)
