"""The incident report, assembled from the durable records: pure functions over what
incidents/queries.py read (tests/unit/test_incident_report.py). Nothing here reads a clock,
Stripe or Postgres: the same records always give the same report."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from billing.periods import billing_period
from incidents.types import (
    AuditRow,
    Corrections,
    DiscrepancyLine,
    DiscrepancyRow,
    EventRow,
    EventsSummary,
    Gap,
    IncidentData,
    IncidentReport,
    Outcome,
    PushRow,
    PushTotals,
    RunRow,
    Totals,
    UnitPrice,
    price_key,
)

VERIFY_PREFIX = "verify|"
# A key whose pushes are still settling in Stripe (the reconciliation's `pending` finding): how a
# correction is in flight, not a discrepancy of its own (the drift metrics leave it out too).
IN_FLIGHT_KIND = "pending"
# Operators' own decisions and fixes (everything else in the audit log is a run's automatic
# correction): docs/incident-report.md lists them.
MANUAL_ACTIONS = frozenset({
    "credits.adjust", "run.approve", "run.reject", "run.pause", "run.resume", "autoheal.pause",
    "autoheal.resume", "event.dismiss", "customer.link",
})
# A discrepancy's latest recorded status -> how it ended (before later runs are considered).
STATUS_OUTCOME = {
    "applied": Outcome.CORRECTED, "skipped": Outcome.CORRECTED, "pending": Outcome.PENDING,
    "held": Outcome.AWAITING_APPROVAL, "proposed": Outcome.AWAITING_APPROVAL, "rejected": Outcome.REJECTED,
    "failed": Outcome.FAILED, "unfixable": Outcome.NEEDS_INVOICE_ADJUSTMENT, "observed": Outcome.OPEN,
    "stale": Outcome.OPEN, "approved": Outcome.OPEN,
}
# Statuses whose key the same run re-checks in its verify pass: no verify row means it was fine.
VERIFIED_BY_RUN = {"applied": Outcome.CORRECTED, "pending": Outcome.CORRECTED, "failed": Outcome.RESOLVED,
                   "stale": Outcome.RESOLVED}
# Outcomes a later successful run that covered the key without finding it settles.
UNSETTLED = (Outcome.OPEN, Outcome.FAILED, Outcome.PENDING)
MAX_LISTED_IDS = 100
HANDLED = ("processed", "ignored")  # inbox statuses of an event its handler finished with
COUNTER_KINDS = ("counter_drift", "orphan_counter")  # the enforcement counter, not billing


def build_report(data: IncidentData, *, max_gap: timedelta) -> IncidentReport:
    gaps = find_gaps(data.runs, data.last_success_before, since=data.since, until=data.until, max_gap=max_gap)
    lines = discrepancy_lines(data.discrepancies, data.runs, data.prices)
    corrections = summarize_pushes(data.pushes, data.audit)
    manual = [a for a in data.audit if a.action in MANUAL_ACTIONS]
    events = summarize_events(data.events)
    return IncidentReport(
        since=data.since, until=data.until, max_gap_seconds=max_gap.total_seconds(),
        totals=totals(gaps, lines, corrections, data.audit, manual, events),
        gaps=gaps, discrepancies=lines, corrections=corrections, manual_adjustments=manual, events=events)


# --------------------------------------------------------------------------------- gaps


def find_gaps(runs: list[RunRow], last_success_before: datetime | None, *, since: datetime, until: datetime,
              max_gap: timedelta) -> list[Gap]:
    """Stretches longer than `max_gap` between successful reconciliations (finish to finish),
    within [since, until]: from the last success before them (`since` when none is known) to the
    next one (`until`, ongoing, when none came)."""
    successes = sorted(r.finished_at for r in runs
                       if r.successful and r.finished_at is not None and since <= r.finished_at <= until)
    points = [last_success_before or since, *successes]
    gaps: list[Gap] = []
    for start, end in zip(points, [*successes, until], strict=True):
        if end - start > max_gap:
            gaps.append(Gap(start=start, end=end, ongoing=end == until and (not successes or end > successes[-1])))
    for gap in gaps:
        failed = sorted((r for r in runs if gap.start < r.started_at < gap.end and not r.successful),
                        key=lambda r: r.started_at)
        gap.runs_failed = len(failed)
        gap.last_error = next((r.error for r in reversed(failed) if r.error), None)
    return gaps


# --------------------------------------------------------------------------------- discrepancies


def business_key(discrepancy_key: str) -> str:
    return discrepancy_key.removeprefix(VERIFY_PREFIX)


def unit_amount(diff: Decimal | None, price: UnitPrice | None) -> int | None:
    """`diff` units at the price, in minor units (half up): positive = under-billed. None without
    a price, or for a value that is no number (a poison ledger row stored before the checks)."""
    if price is None or diff is None or not diff.is_finite():
        return None
    return int((diff * price.unit_amount_decimal).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _covers(run: RunRow, row: DiscrepancyRow) -> bool:
    if row.usage_day is not None:
        return run.covers(row.customer_id, row.meter, row.usage_day)
    if row.period_start is not None:  # a counter: the run's window overlaps its period
        start, end = billing_period(row.period_start)
        first = max(start, run.window_start)
        return first < end and run.covers(row.customer_id, row.meter, first)
    return False


def price_table(items: Iterable[tuple[str, dict[str, Any]]], meters: dict[str, str]) -> dict[str, UnitPrice]:
    """Known unit prices by `price_key(customer, meter event name)`, from the subscription
    mirror's items (`items`: our customer id and the item's price object as Stripe sent it) and
    Stripe's meter ids -> event names (`meters`). Known means: a metered, per-unit price with a
    unit amount, on a meter whose event name is known, and only one such price per customer and
    meter (two different ones: which applies is not knowable here, so none)."""
    found: dict[str, set[tuple[Decimal, str, str]]] = defaultdict(set)
    for customer_id, price in items:
        recurring = price.get("recurring") or {}
        amount = price.get("unit_amount_decimal") or price.get("unit_amount")
        event_name = meters.get(recurring.get("meter") or "")
        if (recurring.get("usage_type") != "metered" or price.get("billing_scheme", "per_unit") != "per_unit"
                or amount is None or event_name is None):
            continue
        found[price_key(customer_id, event_name)].add((Decimal(str(amount)), price.get("currency") or "", price["id"]))
    return {k: UnitPrice(unit_amount_decimal=a, currency=c, price_id=i)
            for k, v in found.items() if len(v) == 1 for a, c, i in v}


def discrepancy_lines(rows: list[DiscrepancyRow], runs: list[RunRow],
                      prices: dict[str, UnitPrice]) -> list[DiscrepancyLine]:
    """One line per business key (a key's verify rows fold into it), with how it ended."""
    by_key: dict[str, list[DiscrepancyRow]] = defaultdict(list)
    for r in rows:
        by_key[business_key(r.discrepancy_key)].append(r)
    run_by_id = {r.run_id: r for r in runs}
    # Successful runs in start order (stable: `runs` comes ordered by start and run id), searched
    # from a key's latest run on: the first covering one settles it. One pass per key over the
    # runs after it only, instead of every run (a 7-day report of 2k runs and 15k open keys took
    # 13 s, docs/PERFORMANCE.md).
    successful = sorted((r for r in runs if r.successful), key=lambda r: r.started_at)
    successful_starts = [r.started_at for r in successful]
    lines = []
    for key, found in sorted(by_key.items()):
        found.sort(key=lambda r: (r.run_started_at, r.discrepancy_key.startswith(VERIFY_PREFIX), r.created_at))
        drift = [r for r in found if r.kind != IN_FLIGHT_KIND]
        if not drift:
            continue  # only ever seen with our own pushes settling: not a discrepancy
        first, latest = drift[0], found[-1]
        outcome = Outcome.NEEDS_INVOICE_ADJUSTMENT if first.kind == "needs_invoice_adjustment" \
            else STATUS_OUTCOME.get(latest.status, Outcome.OPEN)
        settled_by: str | None = latest.run_id
        latest_run = run_by_id.get(latest.run_id)
        if (not latest.discrepancy_key.startswith(VERIFY_PREFIX) and latest.status in VERIFIED_BY_RUN
                and latest_run is not None and latest_run.successful):
            outcome = VERIFIED_BY_RUN[latest.status]
        if outcome in UNSETTLED:
            own_runs = {x.run_id for x in found}
            after = bisect_right(successful_starts, latest.run_started_at)
            settler = next((r for r in successful[after:] if _covers(r, latest) and r.run_id not in own_runs), None)
            if settler is not None:
                outcome, settled_by = Outcome.RESOLVED, settler.run_id
        stripe_side = first.stripe_value is not None
        price = prices.get(price_key(first.customer_id, first.meter)) if stripe_side else None
        lines.append(DiscrepancyLine(
            key=key, kind=first.kind, customer_id=first.customer_id, meter=first.meter,
            day=first.usage_day or first.period_start, first_found=first.created_at, found_by=first.run_id,
            runs=len({x.run_id for x in found}), ledger=first.ledger_value,
            other=first.stripe_value if stripe_side else first.counter_value, diff=first.diff, outcome=outcome,
            settled_by=settled_by,
            amount_minor=(amount := unit_amount(first.diff, price)),
            currency=price.currency if price is not None and amount is not None else None))
    return lines


# --------------------------------------------------------------------------------- corrections


def _add(t: PushTotals, p: PushRow) -> None:
    t.count += 1
    t.value += p.value


def summarize_pushes(pushes: list[PushRow], audit: list[AuditRow]) -> Corrections:
    c = Corrections()
    replaced = {p.replaces for p in pushes if p.replaces}
    for p in pushes:
        if p.status in ("sent", "confirmed"):
            _add(c.applied, p)
            _add(c.by_meter.setdefault(p.meter, PushTotals()), p)
        elif p.status == "cancelled":
            _add(c.cancelled, p)
        elif p.status == "planned":
            _add(c.open, p)
        elif p.status == "failed" and p.identifier not in replaced:
            _add(c.failed_unreplaced, p)
        if not p.audited:
            c.unaudited.append(p.identifier)
    for a in audit:
        c.audit_actions[a.action] = c.audit_actions.get(a.action, 0) + 1
    c.audit_actions = dict(sorted(c.audit_actions.items()))
    return c


# --------------------------------------------------------------------------------- events


def summarize_events(events: Iterable[EventRow]) -> EventsSummary:
    s = EventsSummary()
    for e in sorted(events, key=lambda e: (e.created, e.event_id)):
        if e.status in ("received", "failed"):
            s.unprocessed += 1
        if e.source == "replay":
            s.missed += 1
            s.missed_handled += e.status in HANDLED
            day_type = f"{e.created.date().isoformat()} {e.type}"
            s.missed_by_day_type[day_type] = s.missed_by_day_type.get(day_type, 0) + 1
            if len(s.missed_ids) < MAX_LISTED_IDS:
                s.missed_ids.append(e.event_id)
        elif e.attempts > 1 and e.status in HANDLED:
            s.redelivered_handled += 1
    return s


# --------------------------------------------------------------------------------- totals


def totals(gaps: list[Gap], lines: list[DiscrepancyLine], corrections: Corrections, audit: list[AuditRow],
           manual: list[AuditRow], events: EventsSummary) -> Totals:
    t = Totals(gaps=len(gaps), gap_seconds=sum(g.duration.total_seconds() for g in gaps),
               discrepancies=len(lines), pushes_applied=corrections.applied.count,
               pushes_applied_value=corrections.applied.value, audit_rows=len(audit),
               manual_adjustments=len(manual), events_missed=events.missed)
    for line in lines:
        t.by_outcome[line.outcome.value] = t.by_outcome.get(line.outcome.value, 0) + 1
        if line.other is None or line.diff is None or not line.diff.is_finite() or line.kind in COUNTER_KINDS:
            continue
        t.quantity_by_meter[line.meter] = t.quantity_by_meter.get(line.meter, Decimal(0)) + abs(line.diff)
        if line.amount_minor is None or line.currency is None:
            t.unpriced += 1
        else:
            t.amount_minor_by_currency[line.currency] = t.amount_minor_by_currency.get(line.currency, 0) \
                + line.amount_minor
    t.by_outcome = dict(sorted(t.by_outcome.items()))
    return t
