"""Window and billing-period maths. Pure functions, UTC only."""

from __future__ import annotations

from dataclasses import dataclass
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


def push_timestamp(usage_day: date, now: datetime, window: PushWindow | None = None) -> datetime | None:
    """The meter event timestamp to use for a correction of `usage_day`, or None when Stripe
    can no longer accept any timestamp inside that day (older than its 35-day window).

    Noon of the day when possible (far from both day boundaries), otherwise the earliest time
    Stripe still accepts, never in the future. Under a subscription (`window`, see
    `push_window`): inside the part of the day whose period Stripe still bills, or None.
    """
    if window is not None and window.closed:
        return None
    start = day_start(usage_day) if window is None else window.earliest
    last = day_start(usage_day) + DAY - timedelta(seconds=1) if window is None else window.latest
    earliest_allowed = now - STRIPE_PAST_WINDOW + PUSH_SAFETY_MARGIN
    ts = day_start(usage_day) + timedelta(hours=12)
    ts = max(ts, start, earliest_allowed)
    ts = min(ts, now, last)
    if ts < start or ts < earliest_allowed:
        return None
    return ts.replace(microsecond=0)


# --------------------------------------------------------------------------- subscription periods
#
# Since API 2025-03-31.basil each subscription item carries its own current_period_start/end.
# A customer's periods for a meter come from the metered item billing it (the subscription
# mirror, migration 0018); calendar months remain the fallback. docs/reconciliation.md
# "Billing periods" has the rules and their limits.

# A grace push must reach Stripe (and be counted) before the draft finalizes: no grace push is
# planned closer than this to the finalization.
GRACE_SAFETY_MARGIN = timedelta(minutes=5)
FINAL_INVOICE_STATUSES = ("open", "paid", "uncollectible", "void")


def add_months(d: date, months: int, anchor_day: int) -> date:
    """`d` moved by whole months, on `anchor_day` (clamped to the month's length), as Stripe
    renews a monthly period anchored on the 31st: Jan 31 -> Feb 28 -> Mar 31."""
    m0 = d.month - 1 + months
    year, month = d.year + m0 // 12, m0 % 12 + 1
    last = (date(year + month // 12, month % 12 + 1, 1) - DAY).day
    return date(year, month, min(anchor_day, last))


def step(d: date, interval: str, count: int, anchor_day: int, n: int) -> date:
    """The period boundary n intervals after (n < 0: before) boundary `d`."""
    if interval == "day":
        return d + DAY * count * n
    if interval == "week":
        return d + DAY * 7 * count * n
    return add_months(d, count * n * (12 if interval == "year" else 1), anchor_day)


@dataclass(frozen=True)
class ItemPeriod:
    """A metered subscription item as the mirror holds it: its current period, its cycle, and
    the state of the invoice billing the period before it (None: not in the mirror)."""

    meter_id: str  # price.recurring.meter
    start: datetime  # current_period_start
    end: datetime  # current_period_end
    interval: str = "month"
    interval_count: int = 1
    anchor_day: int | None = None  # day of month of billing_cycle_anchor
    previous_invoice_status: str | None = None
    previous_finalizes_at: datetime | None = None  # the draft's automatically_finalizes_at
    previous_invoice_id: str | None = None

    def period_of(self, d: date) -> tuple[date, date]:
        """The period holding UTC day `d`, in whole days: a period starting at 10:23 on the
        15th is counted from the 15th 00:00 (counters and windows work in UTC days)."""
        cur = (self.start.date(), self.end.date())
        anchor = self.anchor_day or cur[0].day
        n = 0
        while not cur[0] <= d < cur[1] and abs(n) < 1200:
            n += 1 if d >= cur[1] else -1
            cur = (step(self.start.date(), self.interval, self.interval_count, anchor, n),
                   step(self.start.date(), self.interval, self.interval_count, anchor, n + 1))
        return cur


@dataclass(frozen=True)
class PushWindow:
    """Where a correction of one UTC day may put its meter event timestamp: inside
    [earliest, latest] (the part of the day in a period Stripe still bills), or nowhere
    (`closed`: why not)."""

    earliest: datetime
    latest: datetime
    closed: str = ""


def period_of(day: date, item: ItemPeriod | None) -> tuple[date, date]:
    return item.period_of(day) if item is not None else billing_period(day)


def push_window(day: date, now: datetime, item: ItemPeriod | None, grace: timedelta) -> PushWindow | None:
    """The push window of `day` under a metered subscription item (None: no subscription,
    calendar rules). The current period is open; the previous one only during its invoice's
    grace (the draft's `automatically_finalizes_at`, else period end + `grace`) while the
    mirror does not know its invoice final; anything older is closed."""
    start, end = day_start(day), day_start(day) + DAY - timedelta(seconds=1)
    if end >= item_start(item):
        return PushWindow(max(start, item_start(item)), end)
    assert item is not None
    prev_start = day_start(item.period_of(item.start.date() - DAY)[0])
    if start < prev_start:
        return PushWindow(start, end, f"{day} is in a closed billing period (before {prev_start:%Y-%m-%d})")
    if item.previous_invoice_status in FINAL_INVOICE_STATUSES:
        return PushWindow(start, end, f"the invoice of the period ending {item.start:%Y-%m-%d %H:%M} is final "
                                      f"({item.previous_invoice_status})")
    finalizes = item.previous_finalizes_at or item.start + grace
    if now >= finalizes - GRACE_SAFETY_MARGIN:
        return PushWindow(start, end, f"the grace of the period ending {item.start:%Y-%m-%d %H:%M} ended "
                                      f"({finalizes:%Y-%m-%d %H:%M} UTC)")
    return PushWindow(start, min(end, item.start - timedelta(seconds=1)))


def item_start(item: ItemPeriod | None) -> datetime:
    return item.start if item is not None else datetime.min.replace(tzinfo=UTC)


def closed_detail(window: PushWindow | None) -> str:
    return window.closed if window is not None and window.closed else "day is outside Stripe's 35-day meter event window"
