"""The drift policy: pure functions that decide, per key, what is wrong and what to do.

Spec: DESIGN.md "Usage reconciliation semantics". Key = (customer, meter, UTC day) for Stripe,
(customer, meter, billing period) for counters. L = ledger, C = counter, P = our pushes,
S = Stripe's summary. Nothing here does IO, so every rule is unit-tested without Temporal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from enum import StrEnum
from typing import Any

from billing.periods import PushWindow, closed_detail, push_timestamp

# Stripe aggregates in floats; values closer than this are equal.
TOLERANCE = Decimal("0.000001")
# Stripe accepts cancellations for events received within 24 h; keep a margin.
CANCEL_WINDOW = timedelta(hours=23)

# Bounds of the reconciliation settings (RECON_*) and of the same fields of a run's input:
# checked where they enter (billing/settings.py, reconcile/types.py), never at use.
MAX_PAGE_SIZE = 5000  # customers per page activity
MAX_SETTLE_SECONDS = 7 * 24 * 3600  # a run waits at most a week before verifying its pushes

# The usage ingestion contract (README "Ingestion contract"; the CHECK constraints of migration
# 0009_usage_checks.sql say the same): a quantity is a finite number in [0, MAX_QUANTITY) and an
# event happened between EARLIEST_USAGE and USAGE_AHEAD after now. 1e15 keeps every quantity,
# and any realistic day's sum, an exact integer in Stripe's float64 aggregation (2^53 ~ 9e15).
MAX_QUANTITY = Decimal("1e15")
EARLIEST_USAGE = datetime(2000, 1, 1, tzinfo=UTC)
USAGE_AHEAD = timedelta(days=1)


def quantity_refusal(q: Decimal) -> str | None:
    """Why the ingestion contract refuses a usage quantity; None: it does not."""
    if not q.is_finite():
        return "quantity must be a finite number"
    if q < 0:
        return "quantity must not be negative (usage is consumption; a wrong row is corrected, not offset)"
    if q >= MAX_QUANTITY:
        return f"quantity must be below {MAX_QUANTITY:E} (billing.policy.MAX_QUANTITY)"
    return None


def occurred_at_refusal(at: datetime, now: datetime) -> str | None:
    """Why the ingestion contract refuses a usage event's time; None: it does not."""
    if at < EARLIEST_USAGE:
        return f"occurred_at {at.isoformat()} is before {EARLIEST_USAGE.date()}"
    if at >= now + USAGE_AHEAD:
        return f"occurred_at {at.isoformat()} is more than a day in the future"
    return None


def reconcilable_quantity(q: Decimal) -> bool:
    """A stored quantity reconciliation can use. Rows from before the contract's constraints
    may be anything: non-finite or absurd ones (|q| >= MAX_QUANTITY) poison their key, which is
    reported as `invalid_usage` and skipped. Negative finite rows (allowed before) are summed."""
    return q.is_finite() and abs(q) < MAX_QUANTITY


class PushStatus(StrEnum):
    """`stripe_usage_pushes.status` (the SQL CHECK constraint lists the same values)."""

    PLANNED = "planned"  # in the outbox, not (known to be) sent yet
    SENT = "sent"  # Stripe accepted it; not yet seen in a summary
    CONFIRMED = "confirmed"  # reflected in Stripe's summary
    CANCELLED = "cancelled"  # cancelled inside Stripe's 24 h window
    FAILED = "failed"  # lost, rejected, or never counted by Stripe


class PushKind(StrEnum):
    """`stripe_usage_pushes.kind` (the SQL CHECK constraint lists the same values)."""

    DELTA = "delta"  # usage never pushed
    REPUSH = "repush"  # replaces pushes Stripe lost
    COMPENSATION = "compensation"  # a negative event for over-reporting


# Pushes that count in P (our total for a key).
LIVE_STATUSES = (PushStatus.PLANNED, PushStatus.SENT, PushStatus.CONFIRMED)


class FindingKind(StrEnum):
    OK = "ok"
    COUNTER_DRIFT = "counter_drift"
    ORPHAN_COUNTER = "orphan_counter"
    UNDER_REPORTED = "under_reported"  # L > S: push the missing usage
    LOST_PUSH = "lost_push"  # our push is older than the settle window and still not in S
    PENDING = "pending"  # our pushes are still settling: verify later, do nothing now
    OVER_REPORTED = "over_reported"  # S > L: cancel our own pushes or compensate
    NEEDS_INVOICE_ADJUSTMENT = "needs_invoice_adjustment"  # outside Stripe's 35-day window
    UNMAPPED_CUSTOMER = "unmapped_customer"  # usage but no Stripe customer id
    STRIPE_READ_FAILED = "stripe_read_failed"  # Stripe refused the summary read (4xx)
    UNMETERED_USAGE = "unmetered_usage"  # usage under an event name no active meter has
    # Usage under a meter that does not aggregate with `sum` (count, last): Stripe bills it,
    # but delta corrections cannot reconcile it. Reported; the run goes on for everything else.
    UNSUPPORTED_METER = "unsupported_meter"
    # The key's data cannot be reconciled: ledger rows that are not finite or absurd
    # (|q| >= MAX_QUANTITY, from before the contract's constraints), or a value that breaks the
    # arithmetic. Reported with the request ids and skipped; never fails or wedges a run.
    INVALID_USAGE = "invalid_usage"


def normalize(d: Decimal) -> Decimal:
    """Canonical text form for identifiers and Stripe payloads (no exponent, no trailing 0)."""
    with localcontext() as ctx:
        ctx.prec = 80  # quantize must not overflow the default 28 digits on huge values
        q = d.quantize(Decimal("0.000001")).normalize()
    return q if q != 0 else Decimal(0)


def to_stripe_value(d: Decimal) -> str:
    return format(normalize(d), "f")


def correction_identifier(
    customer_id: str, meter: str, day: date, kind: str, pushed_before: Decimal,
    stripe_value: Decimal, ledger_value: Decimal, seq: int = 0,
) -> str:
    """Deterministic meter event identifier (<= 100 chars): the same key in the same state
    always plans the same correction, so a retried activity, a re-run workflow or a crashed
    worker can never push it twice."""
    raw = "|".join(
        [customer_id, meter, day.isoformat(), kind, to_stripe_value(pushed_before),
         to_stripe_value(stripe_value), to_stripe_value(ledger_value), str(seq)]
    )
    return "br_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def fallback_compensation_identifier(cancelled_identifier: str) -> str:
    """Identifier of the compensation that replaces a cancel Stripe refused (past 24 h)."""
    return "br_" + hashlib.sha256(f"{cancelled_identifier}|compensate".encode()).hexdigest()[:40]


def _tolerance(ledger: Decimal) -> Decimal:
    # Stripe sums in floats: absolute for small values, relative (1e-12) for huge ones.
    return max(TOLERANCE, abs(ledger) * Decimal("1e-12"))


def _close(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= _tolerance(a)


def diff_pct(ledger: Decimal, stripe: Decimal) -> Decimal:
    return abs(ledger - stripe) / max(ledger, Decimal(1))


@dataclass(frozen=True)
class Push:
    identifier: str
    value: Decimal
    status: PushStatus
    kind: PushKind
    planned_at: datetime
    sent_at: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass(frozen=True)
class PlannedPush:
    identifier: str
    value: Decimal
    kind: PushKind
    event_timestamp: datetime
    replaces: str | None = None


@dataclass
class StripeFinding:
    kind: FindingKind
    ledger: Decimal
    stripe: Decimal
    pushed: Decimal
    unsettled: Decimal
    beyond_epsilon: bool = False
    needs_approval: bool = False
    push: PlannedPush | None = None
    cancel: list[str] = field(default_factory=list)  # identifiers of our pushes to cancel
    mark_failed: list[str] = field(default_factory=list)  # pushes now known lost
    confirm: list[str] = field(default_factory=list)  # pushes now reflected in S
    detail: str = ""

    @property
    def diff(self) -> Decimal:
        return self.ledger - self.stripe


def _is_unsettled(p: Push, now: datetime, settle: timedelta) -> bool:
    if p.status == PushStatus.PLANNED:
        return True
    if p.status == PushStatus.SENT and p.sent_at is not None and p.sent_at > now - settle:
        return True
    if p.status == PushStatus.CANCELLED and p.cancelled_at is not None and p.cancelled_at > now - settle:
        return True
    return False


def classify_stripe_key(
    *,
    customer_id: str,
    meter: str,
    day: date,
    ledger: Decimal,
    stripe: Decimal,
    pushes: list[Push],
    now: datetime,
    settle: timedelta,
    epsilon: Decimal,
    auto_approve_over_reporting: bool, window: PushWindow | None = None,
) -> StripeFinding:
    live = [p for p in pushes if p.status in LIVE_STATUSES]
    pushed = sum((p.value for p in live), Decimal(0))
    # What S will still move by once everything in flight lands (cancellations move it down).
    unsettled = sum(
        (-p.value if p.status == PushStatus.CANCELLED else p.value)
        for p in pushes if _is_unsettled(p, now, settle)
    ) or Decimal(0)
    beyond = diff_pct(ledger, stripe) > epsilon

    def finding(kind: FindingKind, **kw: Any) -> StripeFinding:
        return StripeFinding(kind, ledger=ledger, stripe=stripe, pushed=pushed, unsettled=unsettled, **kw)

    # Pushes and cancellations in flight make S ambiguous: Stripe may or may not have counted
    # them yet (often it has, within seconds). Sequence number of this correction for the key:
    # every outbox row counts, so a key that returns to an earlier (P, S, L) after a failed
    # attempt still gets a fresh identifier.
    seq = len(pushes)

    if _close(ledger, stripe):
        # In agreement. Everything sent and settled is now known to be reflected.
        confirm = [p.identifier for p in live if p.status == PushStatus.SENT and not _is_unsettled(p, now, settle)]
        return finding(FindingKind.OK, confirm=confirm)

    ts = push_timestamp(day, now, window)  # inside a period Stripe still bills (window: periods.py)
    outside_window = finding(FindingKind.NEEDS_INVOICE_ADJUSTMENT, beyond_epsilon=beyond,
                             detail=closed_detail(window))

    if unsettled != 0:
        # Act only on what is true whether or not the in-flight writes have landed: usage
        # missing under both readings is pushed; anything else waits for the settle window.
        # Never cancel or compensate while S is ambiguous.
        safe = min(ledger - stripe, ledger - stripe - unsettled)
        if safe <= _tolerance(ledger):
            return finding(FindingKind.PENDING, beyond_epsilon=beyond,
                           detail="writes in flight may explain the difference")
        if ts is None:
            return outside_window
        ident = correction_identifier(customer_id, meter, day, PushKind.DELTA, pushed, stripe, ledger, seq)
        return finding(FindingKind.UNDER_REPORTED,
                       beyond_epsilon=diff_pct(ledger, ledger - safe) > epsilon,
                       push=PlannedPush(ident, safe, PushKind.DELTA, ts),
                       detail="pushed only what is missing whether or not the writes in flight landed")

    if ts is None:
        return outside_window
    gap = ledger - stripe
    if gap > 0:
        # Under-reported. Settled pushes that Stripe does not reflect were lost (or rejected
        # asynchronously): mark them failed and push the whole gap under a new identifier.
        settled_sent = sorted(
            (p for p in live if p.status in (PushStatus.SENT, PushStatus.CONFIRMED) and not _is_unsettled(p, now, settle)),
            key=lambda p: p.sent_at or p.planned_at, reverse=True)
        settled_total = sum((p.value for p in settled_sent), Decimal(0))
        lost_amount = settled_total - stripe
        mark_failed: list[str] = []
        if lost_amount > _tolerance(ledger):
            running = Decimal(0)
            for p in settled_sent:
                # A confirmed push that vanished later (cancelled behind our back) is lost too.
                if p.value > 0 and running + p.value <= lost_amount + TOLERANCE:
                    mark_failed.append(p.identifier)
                    running += p.value
        kind = PushKind.REPUSH if mark_failed else PushKind.DELTA
        ident = correction_identifier(customer_id, meter, day, kind, pushed, stripe, ledger, seq)
        return finding(FindingKind.LOST_PUSH if mark_failed else FindingKind.UNDER_REPORTED,
                       beyond_epsilon=beyond, mark_failed=mark_failed,
                       push=PlannedPush(ident, gap, kind, ts, replaces=mark_failed[0] if mark_failed else None))

    # Over-reported: remove `excess`. Cancel our own recent pushes first (exact, no trace on
    # the invoice), then compensate the rest with one negative event.
    excess = -gap
    cancel: list[str] = []
    cancellable = sorted(
        (p for p in live if p.status in (PushStatus.SENT, PushStatus.CONFIRMED) and p.value > 0
         and p.sent_at is not None and p.sent_at > now - CANCEL_WINDOW),
        key=lambda p: p.sent_at or p.planned_at, reverse=True)
    remaining = excess
    tol = _tolerance(ledger)
    for p in cancellable:
        if p.value <= remaining + tol:
            cancel.append(p.identifier)
            remaining -= p.value
    push = None
    if remaining > tol:
        ident = correction_identifier(customer_id, meter, day, PushKind.COMPENSATION, pushed, stripe, ledger, seq)
        push = PlannedPush(ident, -remaining, PushKind.COMPENSATION, ts)
    return finding(FindingKind.OVER_REPORTED, beyond_epsilon=beyond,
                   needs_approval=beyond and not auto_approve_over_reporting, cancel=cancel, push=push)


@dataclass(frozen=True)
class Recheck:
    """What of a planned Stripe correction is still right, judged at apply time against the
    key's state then (`recheck_correction`). Only these parts are applied."""

    cancel: list[str]
    mark_failed: list[str]
    push: bool
    stale: str = ""  # why a part was dropped ("" = the whole plan is still right)

    @property
    def anything(self) -> bool:
        return bool(self.cancel or self.mark_failed or self.push)


def recheck_correction(
    *, cancel: list[str], mark_failed: list[str], push: Decimal | None, fresh: StripeFinding,
    pushes: list[Push],
) -> Recheck:
    """DESIGN.md "Plans are re-checked at apply time": a plan made from (L, S, P) earlier is
    applied only as far as it is still right for the key now. `fresh` is the policy's own
    classification of the key now (`classify_stripe_key` over the ledger, our outbox and a fresh
    Stripe summary); `pushes` is the key's outbox now.

    A part is still right when applying it moves Stripe toward the ledger *without crossing it*
    under the fresh reading, so that the rest is found again and corrected by the next scan:
    - a positive push of v: the key is still under-reported by at least v (fresh push >= v);
    - marking a push failed: the fresh reading finds that push lost too;
    - cancels and a compensation (over-reporting): the key is still over-reported, and each part,
      in the plan's order, still fits in the fresh excess S - L; a cancel only of a push of ours
      that is still live.
    Anything else (pending writes in flight, in agreement, the other direction, outside Stripe's
    window) keeps nothing. A plan checked against the very state it came from is kept whole."""
    tol = _tolerance(fresh.ledger)
    now_kind = (f"the key is now {fresh.kind.value} (ledger {fresh.ledger}, Stripe {fresh.stripe}, "
                f"ours {fresh.pushed})")
    if push is not None and push > 0:
        keep_push = (fresh.kind in (FindingKind.UNDER_REPORTED, FindingKind.LOST_PUSH)
                     and fresh.push is not None and fresh.push.value >= push - tol)
        keep_failed = [i for i in mark_failed if i in fresh.mark_failed]
        dropped = [] if keep_push else [f"push of {push}"]
        dropped += [f"marking {i} failed" for i in mark_failed if i not in keep_failed]
        return Recheck([], keep_failed, keep_push, f"{now_kind}: dropped {', '.join(dropped)}" if dropped else "")

    # Over-reporting: remove at most the excess that is still there, part by part.
    room = -fresh.diff if fresh.kind == FindingKind.OVER_REPORTED else Decimal(0)
    live = {p.identifier: p.value for p in pushes
            if p.status in (PushStatus.SENT, PushStatus.CONFIRMED) and p.value > 0}
    kept: list[str] = []
    dropped = []
    for ident in cancel:
        value = live.get(ident)
        if value is not None and value <= room + tol:
            kept.append(ident)
            room -= value
        else:
            dropped.append(f"cancel of {ident}")
    keep_push = push is not None and -push <= room + tol
    if push is not None and not keep_push:
        dropped.append(f"compensation of {push}")
    return Recheck(kept, [], keep_push, f"{now_kind}: dropped {', '.join(dropped)}" if dropped else "")


@dataclass
class CounterFinding:
    kind: FindingKind
    ledger: Decimal
    counter: Decimal | None  # None = no counter row
    quota: Decimal | None
    over_quota_transition: bool = False

    @property
    def needs_repair(self) -> bool:
        return self.kind in (FindingKind.COUNTER_DRIFT, FindingKind.ORPHAN_COUNTER)


def classify_counter(ledger: Decimal, counter: Decimal | None, quota: Decimal | None,
                     has_events: bool) -> CounterFinding:
    if quota is not None and quota.is_nan():
        quota = None  # the application's counter row is corrupt there: no quota to cross
    if counter is not None and counter.is_nan():
        kind = FindingKind.ORPHAN_COUNTER if not has_events else FindingKind.COUNTER_DRIFT
    elif counter is not None and not has_events and counter != 0:
        kind = FindingKind.ORPHAN_COUNTER
    elif counter is None and ledger == 0:
        kind = FindingKind.OK
    elif counter is None or not _close(ledger, counter):
        kind = FindingKind.COUNTER_DRIFT
    else:
        kind = FindingKind.OK
    transition = False
    if kind != FindingKind.OK and quota is not None:
        before = (Decimal(0) if counter is None or counter.is_nan() else counter) > quota
        after = ledger > quota
        transition = before != after
    return CounterFinding(kind, ledger, counter, quota, transition)
