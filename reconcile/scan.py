"""The scan of one batch of customers, as a pure function: what the ledger, the counters, our
outbox and Stripe's summaries say, in; every finding with its correction plan and status, out.

No IO, no clock, no Temporal: `plan_batch` is unit-tested like billing/policy.py
(tests/unit/test_scan.py). The page activity reads the inputs, calls it, records the findings
and hands the approved ones to the correction writer (reconcile/corrections.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from billing.periods import (
    ItemPeriod,
    PushWindow,
    day_start,
    days_in,
    period_of,
    push_timestamp,
    push_window,
)
from billing.policy import (
    MAX_QUANTITY,
    FindingKind,
    Push,
    StripeFinding,
    classify_counter,
    classify_stripe_key,
)
from reconcile.adjust import ClosedPeriod, plan_closed_period
from reconcile.plans import CounterCorrection, CounterRepair, Finding, StripeCorrection
from reconcile.types import Counts, DiscrepancyStatus, RunContext, WriteMode

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    stripe_customer_id: str | None


@dataclass(frozen=True, slots=True)
class LedgerDay:
    """The usage of one (customer, meter, UTC day): sum of quantities, duplicates absorbed.
    Rows reconciliation cannot use (`billing.policy.reconcilable_quantity`) are not summed but
    counted in `invalid`, a few of their request ids in `invalid_ids`: they poison the key."""

    customer_id: str
    meter: str
    day: date
    total: Decimal
    dupes: int = 0
    invalid: int = 0
    invalid_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CounterRow:
    customer_id: str
    meter: str
    period_start: date
    period_end: date
    value: Decimal
    quota: Decimal | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One of our pushes (`stripe_usage_pushes`) and the key it belongs to."""

    customer_id: str
    meter: str
    usage_day: date
    push: Push


@dataclass(frozen=True)
class BatchRows:
    """What Postgres says about a batch of customers, read in one snapshot: the usage of every
    billing period the window overlaps, their counters and our pushes inside the window."""

    customers: list[Customer]
    ledger_days: list[LedgerDay] = field(default_factory=list)
    counters: list[CounterRow] = field(default_factory=list)
    pushes: list[OutboxRow] = field(default_factory=list)
    # The metered subscription item billing each (customer, meter): its periods (billing/
    # periods.py); a pair without one uses calendar months.
    items: dict[tuple[str, str], ItemPeriod] = field(default_factory=dict)
    # Periods on a final invoice overlapping the window: judged whole (reconcile/adjust.py).
    closed: list[ClosedPeriod] = field(default_factory=list)


@dataclass(frozen=True)
class Summaries:
    """What Stripe says: daily values per (customer, meter), and the pairs it refused to read."""

    values: dict[tuple[str, str], dict[date, Decimal]] = field(default_factory=dict)
    unreadable: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanPolicy:
    window_start: date
    window_end: date
    meters: tuple[str, ...]  # event names of the Stripe meters in scope
    meter_filter: tuple[str, ...]  # as asked; empty = every meter (then unmetered usage is reported)
    epsilon: Decimal
    settle: timedelta
    auto_approve_over_reporting: bool
    write_mode: WriteMode
    now: datetime
    verify: bool = False  # the verify pass: keys are recorded under "verify|..."
    # Active meters left out of scope because they do not aggregate with sum: name -> formula.
    unsupported: dict[str, str] = field(default_factory=dict)
    grace: timedelta = timedelta(hours=1)  # invoice grace when the mirror has no draft
    run_id: str = ""

    @classmethod
    def for_page(cls, ctx: RunContext, write_mode: WriteMode, *, verify: bool, now: datetime) -> ScanPolicy:
        return cls(
            window_start=ctx.window_start, window_end=ctx.window_end,
            meters=tuple(m.event_name for m in ctx.meters), meter_filter=tuple(ctx.meter_filter),
            unsupported=dict(ctx.unsupported_meters),
            epsilon=ctx.policy.epsilon, settle=timedelta(seconds=ctx.policy.settle_seconds),
            auto_approve_over_reporting=ctx.policy.auto_approve_over_reporting,
            write_mode=write_mode, now=now, verify=verify,
            grace=timedelta(seconds=ctx.policy.invoice_grace_seconds), run_id=ctx.run_id)


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class BatchPlan:
    findings: list[Finding]
    confirm: list[str]  # our `sent` pushes that Stripe now reflects: they become `confirmed`
    counts: Counts


ONE_DAY = timedelta(days=1)
# Keys that could not be compared: counted as failures, nothing here can correct them.
_UNREADABLE = (FindingKind.UNMAPPED_CUSTOMER, FindingKind.STRIPE_READ_FAILED, FindingKind.INVALID_USAGE)
# What one key's data can raise in the arithmetic (a NaN compared, a value too long to
# quantize): that key is reported as `invalid_usage`, the batch goes on.
KEY_DATA_ERRORS = (ArithmeticError, ValueError)
_STATUS_OF_WRITE_MODE = {
    WriteMode.OBSERVE: DiscrepancyStatus.OBSERVED,
    WriteMode.PLAN: DiscrepancyStatus.PROPOSED,
    WriteMode.HOLD: DiscrepancyStatus.HELD,
    WriteMode.APPLY: DiscrepancyStatus.APPROVED,  # becomes applied / failed / skipped once applied
}


def plan_batch(rows: BatchRows, summaries: Summaries, policy: ScanPolicy) -> BatchPlan:
    """Every finding of a batch, in a stable order: unmetered usage, counters, unreadable
    summaries, then each customer's Stripe keys (meter by meter, day by day)."""
    ledger, day_totals, unmetered, dedupes, poisoned = _ledger(rows.ledger_days, policy)
    pushes: dict[tuple[str, str, date], list[Push]] = defaultdict(list)
    for o in rows.pushes:
        pushes[(o.customer_id, o.meter, o.usage_day)].append(o.push)
    sids = {c.customer_id: c.stripe_customer_id for c in rows.customers}
    prefix = "verify|" if policy.verify else ""

    findings: list[Finding] = []
    for (cust, meter, day), d in sorted(poisoned.items()):
        what = (f"{d.invalid} usage row(s) not finite or beyond +-{MAX_QUANTITY:E} (request ids: "
                f"{', '.join(d.invalid_ids)}{', ...' if d.invalid > len(d.invalid_ids) else ''})"
                if d.invalid else f"the day's usage sums to {d.total}")
        findings.append(invalid_usage(
            f"{prefix}usage|{cust}|{meter}|{day}", cust, sids.get(cust), meter, day,
            f"{what}: this day and its period's counter are skipped until they are fixed"))
    for (cust, meter), total in sorted(unmetered.items()):
        formula = policy.unsupported.get(meter)
        if formula is not None:
            findings.append(Finding(
                key=f"{prefix}stripe|{cust}|{meter}|unsupported", kind=FindingKind.UNSUPPORTED_METER,
                customer_id=cust, stripe_customer_id=sids.get(cust), meter=meter, ledger=total,
                status=DiscrepancyStatus.OBSERVED,
                detail=f"the Stripe meter aggregates with '{formula}': only sum meters are reconciled; "
                       "this usage is billed by Stripe but not checked"))
            continue
        findings.append(Finding(
            key=f"{prefix}stripe|{cust}|{meter}|unmetered", kind=FindingKind.UNMETERED_USAGE,
            customer_id=cust, stripe_customer_id=sids.get(cust), meter=meter, ledger=total,
            status=DiscrepancyStatus.OBSERVED,
            detail="no active Stripe meter has this event name: this usage is never billed"))
    findings += _counter_findings(rows, day_totals, sids, policy.write_mode, prefix, poisoned)
    for (cust, meter), message in sorted(summaries.unreadable.items()):
        findings.append(Finding(
            key=f"{prefix}stripe|{cust}|{meter}|read", kind=FindingKind.STRIPE_READ_FAILED,
            customer_id=cust, stripe_customer_id=sids.get(cust), meter=meter,
            status=DiscrepancyStatus.FAILED, detail=message[:500]))

    confirm: list[str] = []
    keys_checked = 0
    days = days_in(policy.window_start, policy.window_end)
    # Closed periods are judged whole (one finding per invoice), not day by day.
    judged: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
    for cp in rows.closed:
        judged[(cp.customer_id, cp.meter)].append((cp.period_start, cp.period_end))
        closed_finding = plan_closed_period(cp, policy.write_mode, policy.run_id, prefix)
        if closed_finding is not None:
            findings.append(closed_finding)
    for c in rows.customers:
        for meter in policy.meters:
            readable = (c.customer_id, meter) not in summaries.unreadable
            stripe_days = summaries.values.get((c.customer_id, meter), {})
            item = rows.items.get((c.customer_id, meter))
            for day in days:
                key = (c.customer_id, meter, day)
                L = ledger.get(key, Decimal(0))
                if c.stripe_customer_id is None:
                    if L != 0:
                        findings.append(Finding(
                            key=f"{prefix}stripe|{c.customer_id}|{meter}|{day}",
                            kind=FindingKind.UNMAPPED_CUSTOMER, customer_id=c.customer_id,
                            stripe_customer_id=None, meter=meter, usage_day=day, ledger=L,
                            status=DiscrepancyStatus.FAILED,
                            detail="customer has usage but no stripe_customer_id"))
                    continue
                if not readable or key in poisoned:
                    continue
                S = stripe_days.get(day, Decimal(0))
                key_pushes = pushes.get(key, [])
                if L == 0 and S == 0 and not key_pushes:
                    continue
                keys_checked += 1
                try:
                    window = push_window(day, policy.now, item, policy.grace) if item else None
                    f = classify_stripe_key(
                        customer_id=c.customer_id, meter=meter, day=day, ledger=L, stripe=S,
                        pushes=key_pushes, now=policy.now, settle=policy.settle, epsilon=policy.epsilon,
                        auto_approve_over_reporting=policy.auto_approve_over_reporting, window=window)
                    if f.kind == FindingKind.OK:
                        confirm += f.confirm
                        continue
                    if f.kind == FindingKind.NEEDS_INVOICE_ADJUSTMENT and any(
                            a < day_start(day) + ONE_DAY and day_start(day) < b
                            for a, b in judged[(c.customer_id, meter)]):
                        continue  # its invoice's `adjust|` finding covers it
                    findings.append(_stripe_finding(c, meter, day, f, policy, prefix, window))
                except KEY_DATA_ERRORS as e:
                    findings.append(invalid_usage(
                        f"{prefix}stripe|{c.customer_id}|{meter}|{day}", c.customer_id,
                        c.stripe_customer_id, meter, day,
                        f"cannot reconcile this key (ledger {L}, Stripe {S}): {type(e).__name__}: {e}"))

    counts = tally(findings).add(Counts(
        customers_scanned=len(rows.customers), keys_checked=keys_checked, dedupe_count=dedupes))
    return BatchPlan(findings=findings, confirm=confirm, counts=counts)


def invalid_usage(key: str, customer_id: str, stripe_customer_id: str | None, meter: str,
                  day: date | None, detail: str) -> Finding:
    """A key (or a customer, meter "*") whose data cannot be reconciled: reported, skipped."""
    return Finding(key=key, kind=FindingKind.INVALID_USAGE, customer_id=customer_id,
                   stripe_customer_id=stripe_customer_id, meter=meter, usage_day=day,
                   status=DiscrepancyStatus.FAILED, detail=detail[:500])


def tally(findings: list[Finding]) -> Counts:
    """The counts a set of findings stands for (each finding counted once)."""
    c = Counts()
    for f in findings:
        if f.kind == FindingKind.UNMETERED_USAGE:
            c.unmetered_usage += 1
            continue
        if f.kind == FindingKind.UNSUPPORTED_METER:
            c.unsupported_meter += 1
            continue
        if f.kind in _UNREADABLE:
            c.reconcile_failures += 1
            c.invalid_usage += f.kind == FindingKind.INVALID_USAGE
            continue
        if f.kind == FindingKind.PENDING:
            c.pending += 1
        else:
            c.drift_count += 1
        c.beyond_epsilon += f.beyond_epsilon
        c.over_quota_transitions += f.over_quota_transition
        c.needs_invoice_adjustment += f.kind == FindingKind.NEEDS_INVOICE_ADJUSTMENT
        c.orphan_counters += f.kind == FindingKind.ORPHAN_COUNTER
        c.held_for_approval += f.status in (DiscrepancyStatus.PROPOSED, DiscrepancyStatus.HELD)
    return c


def _status(kind: FindingKind, needs_approval: bool, mode: WriteMode) -> DiscrepancyStatus:
    if kind == FindingKind.PENDING:
        return DiscrepancyStatus.PENDING
    if kind == FindingKind.NEEDS_INVOICE_ADJUSTMENT:
        return DiscrepancyStatus.UNFIXABLE
    return _STATUS_OF_WRITE_MODE[mode.for_correction(needs_approval)]


def _ledger(
    days: list[LedgerDay], policy: ScanPolicy,
) -> tuple[dict[tuple[str, str, date], Decimal], dict[tuple[str, str, date], Decimal],
           dict[tuple[str, str], Decimal], int, dict[tuple[str, str, date], LedgerDay]]:
    """The window's daily values of metered usage, every day's total read (the counters' periods
    are summed from them; counters are checked for every meter), the window's unmetered usage,
    the duplicates absorbed, and the days holding rows reconciliation cannot use (of every
    period read: they poison its counter)."""
    metered = set(policy.meters)
    ledger: dict[tuple[str, str, date], Decimal] = {}
    day_totals: dict[tuple[str, str, date], Decimal] = {}
    unmetered: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    poisoned: dict[tuple[str, str, date], LedgerDay] = {}
    dedupes = 0
    for r in days:
        if r.invalid or not r.total.is_finite():
            poisoned[(r.customer_id, r.meter, r.day)] = r
            continue
        day_totals[(r.customer_id, r.meter, r.day)] = r.total
        if not policy.window_start <= r.day <= policy.window_end:
            continue
        if r.meter in metered:
            ledger[(r.customer_id, r.meter, r.day)] = r.total
            dedupes += r.dupes
        elif not policy.meter_filter:
            unmetered[(r.customer_id, r.meter)] += r.total
    return ledger, day_totals, unmetered, dedupes, poisoned


def _counter_findings(
    rows_in: BatchRows, day_totals: dict[tuple[str, str, date], Decimal],
    sids: dict[str, str | None], mode: WriteMode, prefix: str,
    poisoned: dict[tuple[str, str, date], LedgerDay],
) -> list[Finding]:
    """Counters per (customer, meter, period): the periods of the metered item billing the
    meter, else calendar months (billing/periods.py). A stored counter is compared with the
    ledger over its own [period_start, period_end), whatever periods it was written for: a
    counter kept per calendar month for an anchored customer is never zeroed as an orphan."""
    periods: dict[tuple[str, str, date], date] = {}  # expected counters: key -> period end
    for (cust, meter, d) in [*day_totals, *poisoned]:
        start, end = period_of(d, rows_in.items.get((cust, meter)))
        periods[(cust, meter, start)] = end
    rows = {(r.customer_id, r.meter, r.period_start): r for r in rows_in.counters}
    for key, r in rows.items():
        periods[key] = r.period_end
    by_pair: dict[tuple[str, str], list[tuple[date, Decimal]]] = defaultdict(list)
    for (cust, meter, d), total in day_totals.items():
        by_pair[(cust, meter)].append((d, total))
    bad = defaultdict(list)
    for (cust, meter, d) in poisoned:
        bad[(cust, meter)].append(d)
    out: list[Finding] = []
    for key in sorted(periods):
        cust, meter, pstart = key
        pend = periods[key]
        if any(pstart <= d < pend for d in bad[(cust, meter)]):
            continue  # the period's true total is unknown: reported as invalid_usage
        row = rows.get(key)
        in_period = [t for d, t in by_pair[(cust, meter)] if pstart <= d < pend]
        L = sum(in_period, Decimal(0))
        try:
            cf = classify_counter(L, row.value if row else None, row.quota if row else None, bool(in_period))
            if not cf.needs_repair:
                continue
            out.append(Finding(
                key=f"{prefix}counter|{cust}|{meter}|{pstart}",
                kind=cf.kind, customer_id=cust, stripe_customer_id=sids.get(cust), meter=meter,
                period_start=pstart, ledger=L, counter=cf.counter,
                plan=CounterCorrection(counter=CounterRepair(
                    period_start=pstart, period_end=pend,
                    expected_before=cf.counter, value=L, quota=cf.quota)),
                status=_status(cf.kind, False, mode),
                over_quota_transition=cf.over_quota_transition,
                detail="counter has no usage behind it" if cf.kind == FindingKind.ORPHAN_COUNTER else ""))
        except KEY_DATA_ERRORS as e:
            out.append(invalid_usage(
                f"{prefix}counter|{cust}|{meter}|{pstart}", cust, sids.get(cust), meter, None,
                f"cannot check this counter (ledger {L}, counter {row.value if row else None}): "
                f"{type(e).__name__}: {e}"))
    return out


def _stripe_finding(c: Customer, meter: str, day: date, f: StripeFinding, policy: ScanPolicy,
                    prefix: str, window: PushWindow | None) -> Finding:
    plan = None
    if f.push or f.cancel:
        plan = StripeCorrection(
            expected_pushed=f.pushed, needs_approval=f.needs_approval, cancel=f.cancel,
            mark_failed=f.mark_failed, push=f.push,
            timestamp=f.push.event_timestamp if f.push else push_timestamp(day, policy.now, window))
    return Finding(
        key=f"{prefix}stripe|{c.customer_id}|{meter}|{day}", kind=f.kind, customer_id=c.customer_id,
        stripe_customer_id=c.stripe_customer_id, meter=meter, usage_day=day,
        ledger=f.ledger, pushed=f.pushed, stripe=f.stripe, beyond_epsilon=f.beyond_epsilon,
        plan=plan, status=_status(f.kind, f.needs_approval, policy.write_mode), detail=f.detail)
