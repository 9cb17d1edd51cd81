"""RevenueReconciliation: input, phases, counts, per-day totals, findings, progress and result.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import ClassVar, Self

from pydantic import BaseModel, Field, model_validator

from common.paged import PagedCarry, PagedRunContext, PagedRunInput

RUN_KIND = "revenue"  # billing.reconciliation_runs.kind of these runs
INVALID_WINDOW = "InvalidWindow"  # the same failure type as ReconcileUsage's (exit 2 in the CLI)
# One run covers at most a quarter: its listings (every invoice, payment, refund and balance
# transaction of the range) stay bounded; a longer audit is several runs.
MAX_RANGE_DAYS = 92
# Invoices paid in the range may have been created long before it (net-30 and later): the
# invoice listing reaches this far back before `since`; payments too (a payment is created
# when it is attempted, paid later). An invoice older than that is still read, one by one, when
# it shows up through a payment, a refund or the mirror.
DEFAULT_LOOKBACK_DAYS = 90
MAX_LOOKBACK_DAYS = 400
DEFAULT_DAYS = 7  # without a range: the last 7 complete UTC days (the weekly schedule)


class RevenueInput(PagedRunInput):
    """Input of RevenueReconciliation (also the JSON for `temporal workflow start`). `since` and
    `until` are inclusive UTC days; without them, the last `days` complete UTC days (until
    yesterday). `until` may not be after today (UTC). Every customer (no `customer`)."""

    RUN_NAME: ClassVar[str] = "revenue reconciliation"

    since: date | None = None
    until: date | None = None
    days: int = Field(default=DEFAULT_DAYS, ge=1, le=MAX_RANGE_DAYS)
    lookback_days: int = Field(default=DEFAULT_LOOKBACK_DAYS, ge=0, le=MAX_LOOKBACK_DAYS)
    carried: RevenueCarry | None = None  # continue-as-new state; callers leave it empty

    @model_validator(mode="after")
    def _check(self) -> RevenueInput:
        if self.customer is not None:
            raise ValueError("revenue reconciliation covers every customer: no customer filter")
        if (self.since is None) != (self.until is None):
            raise ValueError("give both since and until, or neither")
        if self.since is not None and self.until is not None:
            check_range(self.since, self.until)
        return self

    def window(self, today: date) -> tuple[date, date]:
        """(since, until) for a run starting on `today` (UTC); ValueError when `until` is in the
        future."""
        if self.since is None or self.until is None:
            until = today - timedelta(days=1)
            return until - timedelta(days=self.days - 1), until
        if self.until > today:
            raise ValueError(f"until {self.until} is in the future (today is {today} UTC)")
        return self.since, self.until


def check_range(since: date, until: date) -> None:
    if since > until:
        raise ValueError(f"since {since} is after until {until}")
    span = (until - since).days + 1
    if span > MAX_RANGE_DAYS:
        raise ValueError(f"the range covers {span} days; at most {MAX_RANGE_DAYS} per run")


def day_bounds(d: date) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day `d`."""
    start = datetime.combine(d, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


class Listing(StrEnum):
    """Stripe's listings a run reads, in this order; then the comparison day by day."""

    INVOICES = "invoices"
    PAYMENTS = "invoice_payments"
    REFUNDS = "refunds"
    BALANCE = "balance_transactions"
    COMPARE = "compare"
    DONE = "done"


# Listing -> the Stripe object kind it lists.
LISTED_KIND = {Listing.INVOICES: "invoice", Listing.PAYMENTS: "invoice_payment", Listing.REFUNDS: "refund",
               Listing.BALANCE: "balance_transaction"}


class FindingKind(StrEnum):
    MISSING_LOCALLY = "missing_locally"  # Stripe has the invoice, the mirror does not
    STATUS_DIFFERS = "status_differs"  # status or paid_at differ
    AMOUNT_DIFFERS = "amount_differs"  # amount_paid, or the refunds in the range, differ
    PAID_TWICE = "paid_twice"  # paid invoice payments above what the invoice asked for
    MISSING_IN_STRIPE = "missing_in_stripe"  # the mirror has it, Stripe does not: never deleted


class FindingStatus(StrEnum):
    OBSERVED = "observed"  # dry-run, or apply while auto-healing is paused
    APPLIED = "applied"  # the mirror now agrees with Stripe (fixed by this run, audited)
    UNFIXABLE = "unfixable"  # a resync cannot fix it (paid twice, missing in Stripe): for a human
    FAILED = "failed"  # the fix was refused (e.g. a customer mapping conflict)


class RevenueCounts(BaseModel):
    """A run's counts. The findings' (findings, by_kind, fixed, unfixable, fix_failures) are
    read back from billing.revenue_findings at the end of each day, so an attempt that died after
    writing them still counts; the others are those of the attempts that completed."""

    days: int = 0
    invoices_compared: int = 0
    findings: int = 0
    by_kind: dict[str, int] = Field(default_factory=dict)
    fixed: int = 0  # invoices whose findings are applied: the mirror agrees with Stripe now
    refunds_recorded: int = 0  # refunds added to billing.invoice_refunds (apply, audited)
    unfixable: int = 0  # findings a resync cannot fix (paid twice, missing in Stripe, ...)
    fix_failures: int = 0  # findings whose fix was refused
    stripe_objects: int = 0  # objects listed from Stripe

    def add(self, o: Self) -> Self:
        out = self.model_copy(deep=True)
        for k in type(self).model_fields:
            if k == "by_kind":
                for f, n in o.by_kind.items():
                    out.by_kind[f] = out.by_kind.get(f, 0) + n
            else:
                setattr(out, k, getattr(out, k) + getattr(o, k))
        return out


class RevenueCarry(PagedCarry):
    phase: Listing = Listing.INVOICES
    since: date
    until: date
    lookback_days: int
    day: date | None = None  # COMPARE: the day being compared
    pages_done: int = 0
    counts: RevenueCounts = Field(default_factory=RevenueCounts)


class ListPageInput(BaseModel):
    context: PagedRunContext
    listing: Listing
    created_gte: int  # unix seconds
    created_lt: int
    starting_after: str | None = None
    page_size: int
    max_pages: int


class ListCheckpoint(BaseModel):
    starting_after: str | None = None
    pages: int = 0
    listed: int = 0


class ListPageResult(BaseModel):
    next_cursor: str | None  # None: the listing is done
    pages: int
    listed: int


class DayInput(BaseModel):
    context: PagedRunContext
    day: date
    since: date
    until: date
    batch: int = 500


class DayCheckpoint(BaseModel):
    """Heartbeat of `compare_day`: the day's invoices through `done_through` are compared."""

    done_through: str | None = None
    counts: RevenueCounts = Field(default_factory=RevenueCounts)
    paused: bool = False


class DayResult(BaseModel):
    counts: RevenueCounts
    paused: bool = False


class RunInput(BaseModel):
    context: PagedRunContext
    since: date
    until: date


class FinishInput(BaseModel):
    context: PagedRunContext
    counts: RevenueCounts
    observe_only: bool
    error: str | None = None


class RevenueProgress(BaseModel):
    run_id: str
    mode: str
    phase: Listing
    day: date | None
    days_total: int
    days_done: int
    pages_done: int
    counts: RevenueCounts
    paused: bool


class RevenueResult(BaseModel):
    run_id: str
    mode: str
    since: date
    until: date
    actor: str
    counts: RevenueCounts
    paused: bool  # auto-healing was paused: observe-only, nothing written

    def ui_outcome(self) -> str:
        """`BillingOutcome` of the run (common/ui.py upserts it when the run ends)."""
        c = self.counts
        if self.paused and c.findings:
            return "observe_only"
        if c.unfixable or c.fix_failures:
            return "needs_attention"
        if not c.findings:
            return "clean"
        return "drift_fixed" if self.mode == "apply" else "drift_found"


RevenueInput.model_rebuild()
