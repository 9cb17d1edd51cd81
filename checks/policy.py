"""What each daily check concludes from what it read: pure functions over plain values, unit
tested in tests/unit/test_daily_checks_policy.py. The activities read (checks/store.py, the
Stripe gateway) and call these."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from checks.types import CheckItem, CheckName, CheckResult


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------- subscriptions


@dataclass(frozen=True)
class ActiveComparison:
    """Active subscriptions in Stripe vs the mirror: counts, how many ids are on one side only,
    and a sample of each (Stripe's with the mirror's status, None when the mirror lacks it)."""

    local: int
    stripe: int
    only_stripe: int
    only_local: int
    only_stripe_sample: list[tuple[str, str | None]]
    only_local_sample: list[str]


def active_subscriptions(c: ActiveComparison, *, sample: int) -> CheckResult:
    items = [CheckItem(key=s, detail="active in Stripe; " + (
        f"{status} in billing.subscriptions" if status else "missing from billing.subscriptions"))
        for s, status in c.only_stripe_sample]
    items += [CheckItem(key=s, detail="active in billing.subscriptions, not active in Stripe")
              for s in c.only_local_sample]
    differ = c.only_local + c.only_stripe
    summary = (f"{c.local} active locally, {c.stripe} in Stripe"
               + (f"; {_plural(differ, 'subscription')} differ" if differ else ""))
    return CheckResult(check=CheckName.ACTIVE_SUBSCRIPTIONS, passed=differ == 0, summary=summary, findings=differ,
                       figures={"local": c.local, "stripe": c.stripe,
                                "only_local": c.only_local, "only_stripe": c.only_stripe},
                       items=items[:sample])


# ---------------------------------------------------------------------------- webhooks


@dataclass
class DayTypeTally:
    """Stripe's events of one UTC day and type, and those of them the inbox lacks."""

    stripe: int = 0
    missing: int = 0
    missing_ids: list[str] = field(default_factory=list)


def tally_key(day: date, event_type: str) -> str:
    return f"{day.isoformat()} {event_type}"


def webhook_gaps(tallies: dict[str, DayTypeTally], inbox: dict[str, int], *, since: datetime, until: datetime,
                 sample: int) -> CheckResult:
    """`tallies`: Stripe's events per `tally_key` (day and type) with the ones missing from the
    inbox; `inbox`: the inbox's events per the same key. A gap is a (day, type) with an event
    Stripe has and the inbox does not."""
    gaps = sorted((k, t) for k, t in tallies.items() if t.missing)
    missing = sum(t.missing for _, t in gaps)
    items = [CheckItem(key=k, detail=f"{t.stripe} in Stripe, {inbox.get(k, 0)} in the inbox, {t.missing} missing: "
                                     + ", ".join(t.missing_ids) + ("" if len(t.missing_ids) == t.missing else ", ..."))
             for k, t in gaps]
    seen = sum(t.stripe for t in tallies.values())
    window = f"{since:%Y-%m-%d %H:%M}..{until:%Y-%m-%d %H:%M} UTC"
    summary = (f"{seen} Stripe events {window}: "
               + (f"{_plural(missing, 'event')} missing from the inbox on {_plural(len(gaps), 'day/type')}"
                  if gaps else "all in the inbox"))
    return CheckResult(check=CheckName.WEBHOOK_GAPS, passed=not gaps, summary=summary, findings=missing,
                       figures={"stripe_events": seen, "inbox_events": sum(inbox.values()), "missing": missing,
                                "gap_day_types": len(gaps)},
                       items=items[:sample])


# ---------------------------------------------------------------------------- counters


@dataclass(frozen=True)
class UsageWithoutCounter:
    customer_id: str
    meter: str
    period_start: date
    quantity: Decimal
    events: int


def usage_without_counter(total: int, rows: Iterable[UsageWithoutCounter], *, since: date) -> CheckResult:
    """`total`: (customer, meter, period) keys with usage since `since` and no counter row whose
    period holds it; `rows`: a sample of them."""
    items = [CheckItem(key=f"{r.customer_id} {r.meter} {r.period_start}",
                       detail=f"{r.events} usage events ({r.quantity}) and no usage counter") for r in rows]
    summary = (f"{_plural(total, 'customer/meter/period')} with usage since {since} and no counter"
               if total else f"every customer with usage since {since} has its counters")
    return CheckResult(check=CheckName.USAGE_WITHOUT_COUNTER, passed=total == 0, summary=summary, findings=total,
                       figures={"keys": total}, items=items)


@dataclass(frozen=True)
class StaleCounter:
    customer_id: str
    meter: str
    period_start: date
    value: Decimal
    last_reconciled: datetime | None


def stale_counters(total: int, checked: int, rows: Iterable[StaleCounter], *, days: int) -> CheckResult:
    """`checked`: counters of periods the last `days` days overlap; `total`: those of them no
    successful reconciliation covered within `days` days; `rows`: a sample of them."""
    items = [CheckItem(key=f"{r.customer_id} {r.meter} {r.period_start}",
                       detail=f"value {r.value}; last reconciled "
                              + (f"{r.last_reconciled:%Y-%m-%d %H:%M} UTC" if r.last_reconciled else "never"))
             for r in rows]
    summary = (f"{total} of {_plural(checked, 'current counter')} not reconciled within {days} days"
               if total else f"all {_plural(checked, 'current counter')} reconciled within {days} days")
    return CheckResult(check=CheckName.STALE_COUNTERS, passed=total == 0, summary=summary, findings=total,
                       figures={"stale": total, "checked": checked, "days": days}, items=items)


# ---------------------------------------------------------------------------- inbox


@dataclass(frozen=True)
class WaitingEvent:
    event_id: str
    type: str
    status: str
    received_at: datetime
    attempts: int
    error: str | None


def inbox_backlog(counts: dict[str, int], oldest: datetime | None, rows: Iterable[WaitingEvent], *,
                  minutes: int, now: datetime) -> CheckResult:
    """`counts`: inbox rows still `received` or `failed` for longer than `minutes`, by status;
    `oldest`: when the oldest of them arrived; `rows`: a sample, oldest first."""
    total = sum(counts.values())
    items = [CheckItem(key=r.event_id,
                       detail=f"{r.type} {r.status} since {r.received_at:%Y-%m-%d %H:%M} UTC, {r.attempts} attempts"
                              + (f": {r.error}" if r.error else "")) for r in rows]
    age = (now - oldest).total_seconds() if oldest else 0.0
    summary = (f"{counts.get('received', 0)} received and {counts.get('failed', 0)} failed inbox events older "
               f"than {minutes} min (oldest {age / 3600:.1f} h)" if total
               else f"no inbox event received or failed for more than {minutes} min")
    return CheckResult(check=CheckName.INBOX_BACKLOG, passed=total == 0, summary=summary, findings=total,
                       figures={"received": counts.get("received", 0), "failed": counts.get("failed", 0),
                                "oldest_age_seconds": age, "minutes": minutes},
                       items=items)


def could_not_run(check: CheckName, error: str) -> CheckResult:
    """A check whose activity failed for good: it fails, saying why."""
    return CheckResult(check=check, passed=False, summary=f"could not run: {error}", findings=0, error=error)
