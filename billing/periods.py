"""Window and billing-period maths. Pure functions, UTC only."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

DAY = timedelta(days=1)
# Stripe refuses meter event timestamps older than 35 days; keep a margin for clock skew and
# for the time between planning and sending.
STRIPE_PAST_WINDOW = timedelta(days=35)
PUSH_SAFETY_MARGIN = timedelta(hours=1)


def day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def days_in(start: date, end: date) -> list[date]:
    """Every UTC day from start to end, both inclusive."""
    if end < start:
        raise ValueError(f"window end {end} is before its start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def billing_period(d: date) -> tuple[date, date]:
    """The billing period holding day d: [first of month, first of next month).

    Periods are calendar months in UTC; see docs/reconciliation.md for why.
    """
    start = d.replace(day=1)
    nxt = (start + timedelta(days=32)).replace(day=1)
    return start, nxt


def current_period_window(today: date) -> tuple[date, date]:
    """Default reconciliation window: the current billing period up to today (inclusive)."""
    start, _ = billing_period(today)
    return start, today


def periods_overlapping(start: date, end: date) -> list[tuple[date, date]]:
    out: list[tuple[date, date]] = []
    cur = billing_period(start)
    while cur[0] <= end:
        out.append(cur)
        cur = billing_period(cur[1])
    return out


def push_timestamp(usage_day: date, now: datetime) -> datetime | None:
    """The meter event timestamp to use for a correction of `usage_day`, or None when Stripe
    can no longer accept any timestamp inside that day (older than its 35-day window).

    Noon of the day when possible (far from both day boundaries), otherwise the earliest time
    Stripe still accepts, never in the future.
    """
    start = day_start(usage_day)
    last = start + DAY - timedelta(seconds=1)
    earliest_allowed = now - STRIPE_PAST_WINDOW + PUSH_SAFETY_MARGIN
    ts = start + timedelta(hours=12)
    ts = max(ts, earliest_allowed)
    ts = min(ts, now, last)
    if ts < start or ts < earliest_allowed:
        return None
    return ts.replace(microsecond=0)
