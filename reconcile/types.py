"""ReconcileUsage: inputs, results, the carried state, page and run models; the statuses and
the write mode. A finding and its correction plan are in reconcile/plans.py.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, computed_field, model_validator

from billing.budget_lane import BudgetLane
from billing.policy import MAX_PAGE_SIZE, MAX_SETTLE_SECONDS
from common.types import ApprovalDecision, Mode, RunStatus


class Permanent:
    """ApplicationError types that retrying cannot fix (the workflow's retry policy lists them)."""

    INVALID_WINDOW = "InvalidWindow"
    UNKNOWN_CUSTOMER = "UnknownCustomer"
    UNKNOWN_METER = "UnknownMeter"
    UNSUPPORTED_METER = "UnsupportedMeter"
    # Every customer of a batch failed on a deterministic data error: not one customer's data
    # but something shared (raised with non_retryable=True: retrying the same data cannot help).
    INVALID_DATA = "InvalidData"


class WriteMode(StrEnum):
    """What a page may write. Decided once per page by `page_write_mode` (the workflow, which
    knows the pause state) and passed down; per correction, `for_correction` adds HOLD."""

    OBSERVE = "observe"  # detect and report; no corrective write (dry-run, paused, a plan's verify)
    PLAN = "plan"  # record every correction as `proposed`; applied once approved
    APPLY = "apply"  # correct now
    HOLD = "hold"  # one correction of an APPLY page that waits for approval (never a page's mode)

    def for_correction(self, needs_approval: bool) -> WriteMode:
        """Over-reporting beyond epsilon without auto-approve (`needs_approval`, decided by
        billing.policy) waits for approval instead of being applied."""
        return WriteMode.HOLD if self is WriteMode.APPLY and needs_approval else self


def page_write_mode(mode: Mode, *, paused: bool, verify: bool) -> WriteMode:
    """The one place that decides what a page may write."""
    if mode == Mode.DRY_RUN or paused or (verify and mode == Mode.PLAN):
        # A plan run applies exactly its plan: its verify pass only reports.
        return WriteMode.OBSERVE
    return WriteMode.PLAN if mode == Mode.PLAN else WriteMode.APPLY


class DiscrepancyStatus(StrEnum):
    """`discrepancies.status` (the SQL CHECK constraint lists the same values)."""

    OBSERVED = "observed"  # reported; nothing is done about it here
    PROPOSED = "proposed"  # in a plan: waits for approve/reject
    HELD = "held"  # an apply run's correction that waits for approval
    APPROVED = "approved"  # to be applied now; becomes applied / skipped / failed / unfixable
    APPLIED = "applied"
    PENDING = "pending"  # writes in flight: the verify pass re-checks
    SKIPPED = "skipped"  # already handled earlier (another attempt or run sent it)
    # The key changed since it was planned (ledger, outbox or Stripe): the parts of the plan
    # that were no longer right were not applied; the next scan re-plans the key.
    STALE = "stale"
    REJECTED = "rejected"
    FAILED = "failed"
    UNFIXABLE = "unfixable"  # outside Stripe's 35-day meter event window


# What an approved plan applies.
AWAITING_APPROVAL = (DiscrepancyStatus.PROPOSED, DiscrepancyStatus.HELD)
# The customers a verify pass re-checks: those whose keys this run corrected, saw in flight, or
# found stale at apply time (the verify pass re-plans them).
TOUCHED = (DiscrepancyStatus.APPLIED, DiscrepancyStatus.PENDING, DiscrepancyStatus.FAILED,
           DiscrepancyStatus.STALE)


class Counts(BaseModel):
    """Every number a run reports. Additive: pages are summed with `add`."""

    customers_scanned: int = 0
    keys_checked: int = 0
    drift_count: int = 0  # keys (counter or Stripe) where something disagreed with the ledger
    dedupe_count: int = 0  # duplicate usage submissions absorbed by the ledger in the window
    counter_repairs: int = 0
    orphan_counters: int = 0
    over_quota_transitions: int = 0
    corrections_pushed: int = 0  # meter events sent (delta, re-push, compensation)
    corrections_cancelled: int = 0  # our own meter events cancelled inside Stripe's 24 h
    pending: int = 0  # pushes still settling in Stripe
    beyond_epsilon: int = 0
    held_for_approval: int = 0
    needs_invoice_adjustment: int = 0
    stale_skipped: int = 0  # corrections (or parts) not applied: the key changed since the plan
    unmetered_usage: int = 0  # (customer, meter) with usage but no active Stripe meter: never billed
    # Keys skipped because their data cannot be reconciled (non-finite or absurd ledger rows):
    # also counted in reconcile_failures.
    invalid_usage: int = 0
    # (customer, meter) with usage under a meter that does not aggregate with `sum`: not reconciled.
    unsupported_meter: int = 0
    reconcile_failures: int = 0
    stripe_writes: int = 0

    def add(self, other: Counts) -> Counts:
        return Counts(**{k: getattr(self, k) + getattr(other, k) for k in Counts.model_fields})


class ReconcileUsageInput(BaseModel):
    """Input of the ReconcileUsage workflow (also the JSON for `temporal workflow start`)."""

    start_date: date | None = None  # default: first day of the current billing period
    end_date: date | None = None  # inclusive; default: today (UTC)
    customers: list[str] = Field(default_factory=list)  # internal customer ids; empty = all
    meters: list[str] = Field(default_factory=list)  # meter event names; empty = all
    mode: Mode = Mode.DRY_RUN
    actor: str = "system"
    # Without start_date: reconcile the last N UTC days up to today instead of the current
    # billing period (what a schedule uses: its input is fixed, its "today" is not).
    lookback_days: int | None = Field(default=None, ge=1, le=400)
    # Policy overrides; None = the worker's settings. The same bounds as the settings
    # (RECON_*): raw JSON from `temporal workflow start` outside them fails the run at once
    # (a non-retryable ValidationError), before anything is read or written.
    epsilon: Decimal | None = Field(default=None, ge=0, lt=1)
    settle_seconds: int | None = Field(default=None, ge=0, le=MAX_SETTLE_SECONDS)
    auto_approve_over_reporting: bool | None = None
    page_size: int | None = Field(default=None, ge=1, le=MAX_PAGE_SIZE)
    approval_timeout_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    # A range of customers by id, (customers_after, customers_through]; None = unbounded. The
    # rolling read-back reconciles its slices this way (readback/).
    customers_after: str | None = None
    customers_through: str | None = None
    # Summary reads also fit in this lane of the Stripe budget (the read-back's share).
    budget_lane: BudgetLane | None = None
    # False: no settle timer and verify pass after corrections; the usage tick verifies every
    # push once it has settled (the read-back's slices leave it to the tick).
    verify_after_settle: bool = True
    # Carried across continue-as-new; callers leave it empty.
    carried: ReconcileCarry | None = None

    @model_validator(mode="after")
    def _check_window(self) -> ReconcileUsageInput:
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        if self.customers_after is not None and self.customers_through is not None \
                and self.customers_through <= self.customers_after:
            raise ValueError(f"customers_through {self.customers_through!r} is not after "
                             f"customers_after {self.customers_after!r}")
        return self


class MeterInfo(BaseModel):
    event_name: str
    stripe_meter_id: str


class Policy(BaseModel):
    """The run's resolved policy (input overrides, else the settings): bounded like both."""

    epsilon: Decimal = Field(ge=0, lt=1)
    settle_seconds: int = Field(ge=0, le=MAX_SETTLE_SECONDS)
    auto_approve_over_reporting: bool
    page_size: int = Field(ge=1, le=MAX_PAGE_SIZE)
    # Stripe's invoice finalization grace when the mirror has no draft to read it from.
    invoice_grace_seconds: int = Field(default=3600, ge=0, le=259200)


class RunContext(BaseModel):
    run_id: str  # = workflow id
    workflow_run_id: str
    mode: Mode
    window_start: date
    window_end: date
    customers: list[str] = Field(default_factory=list)
    meters: list[MeterInfo] = Field(default_factory=list)  # Stripe meters in scope
    meter_filter: list[str] = Field(default_factory=list)  # as asked; empty = every meter
    # Active meters of the account left out of the default scope because they do not aggregate
    # with `sum`: event name -> formula (count, last). Named with --meter, they are refused.
    unsupported_meters: dict[str, str] = Field(default_factory=dict)
    policy: Policy
    actor: str = "system"
    # Auto-healing was paused (billing-recon pause) when the run started: it starts observe-only.
    globally_paused: bool = False
    # The input's customer range, budget lane and verify choice (defaults: a run from before them).
    customers_after: str | None = None
    customers_through: str | None = None
    budget_lane: BudgetLane | None = None
    verify_after_settle: bool = True

    def warnings(self) -> list[str]:
        """Run-level warnings: what the run left out and why (in its result and report)."""
        return [f"meter {name} aggregates with '{formula}': only sum meters can be reconciled with "
                "delta corrections; its usage is reported (unsupported_meter), not reconciled"
                for name, formula in sorted(self.unsupported_meters.items())]


class StartRunInput(BaseModel):
    run_id: str
    workflow_run_id: str
    request: ReconcileUsageInput
    today: date


class Phase(StrEnum):
    SCANNING = "scanning"
    AWAITING_APPROVAL = "awaiting_approval"
    APPLYING = "applying"
    SETTLING = "settling"
    VERIFYING = "verifying"
    DONE = "done"


class ReconcileCarry(BaseModel):
    """The workflow's whole state: what continue-as-new carries."""

    context: RunContext
    phase: Phase = Phase.SCANNING
    cursor: str | None = None
    pages_done: int = 0
    counts: Counts = Field(default_factory=Counts)
    verify_counts: Counts | None = None
    paused: bool = False
    decision: ApprovalDecision | None = None
    approved: bool | None = None
    # Some scan page ran observe-only because auto-healing was paused: its findings were not
    # corrected, so the scan is done again once resumed (or the run ends observe-only).
    paused_scan: bool = False
    observe_only: bool = False  # the run ended without correcting (paused from start to end)


class PageInput(BaseModel):
    context: RunContext
    cursor: str | None = None  # last customer_id of the previous page
    write_mode: WriteMode  # `page_write_mode`; never HOLD
    verify: bool = False  # second pass after the settle timer: only this run's keys

    @model_validator(mode="before")
    @classmethod
    def _from_observe_only(cls, data: Any) -> Any:
        """Input scheduled by a workflow from before `write_mode` (recorded histories, runs
        open across a deploy) carries only `observe_only`: the same decision, from it."""
        if isinstance(data, dict) and data.get("write_mode") is None and "context" in data:
            ctx = data["context"]
            mode = ctx.mode if isinstance(ctx, RunContext) else Mode(ctx["mode"])
            data = {**data, "write_mode": page_write_mode(
                mode, paused=bool(data.get("observe_only")), verify=bool(data.get("verify")))}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def observe_only(self) -> bool:
        """Serialized too: a worker from before `write_mode` reads this."""
        return self.write_mode == WriteMode.OBSERVE


class PageResult(BaseModel):
    next_cursor: str | None  # None = no more customers
    counts: Counts


class PageCheckpoint(BaseModel):
    """Heartbeat details of a page activity: customers before `done_through` are finished."""

    done_through: str | None = None
    counts: Counts = Field(default_factory=Counts)


class ApplyPlanInput(BaseModel):
    context: RunContext
    cursor: str | None = None  # discrepancy_key
    observe_only: bool = False


class FinishRunInput(BaseModel):
    context: RunContext
    status: RunStatus
    counts: Counts
    verify_counts: Counts | None = None
    error: str | None = None
    observe_only: bool = False


class FinishRunResult(BaseModel):
    """The counts a run reports, as `finish_run` recorded them: its writes and stale findings
    counted from durable records (outbox, audit log, discrepancies), the rest as the pages
    tallied them. An attempt killed mid-page loses its tally, never its records."""

    counts: Counts
    verify_counts: Counts | None = None


class ApprovalResult(BaseModel):
    run_id: str
    accepted: bool
    status: RunStatus


class RunStatusUpdate(BaseModel):
    run_id: str
    status: RunStatus
    approved_by: str | None = None
    rejected_by: str | None = None
    reason: str | None = None
    reject_held: bool = False  # the proposed/held corrections will not be applied


class ReconcileProgress(BaseModel):
    run_id: str
    mode: Mode
    phase: Phase
    paused: bool
    pages_done: int
    customers_scanned: int
    cursor: str | None
    counts: Counts


class ReconcileResult(BaseModel):
    run_id: str
    status: RunStatus
    mode: Mode
    window_start: date
    window_end: date
    counts: Counts
    verify_counts: Counts | None = None
    finished_at: datetime | None = None
    # An apply run that auto-healing's pause kept observe-only from start to end: it detected
    # and reported, corrected nothing, and does not count as a successful reconciliation.
    observe_only: bool = False
    # What the run left out and why (RunContext.warnings), e.g. meters that are not sum meters.
    warnings: list[str] = Field(default_factory=list)

    def ui_outcome(self) -> str:
        """`BillingOutcome` of the run (common/ui.py upserts it when the run ends)."""
        from reconcile.details import outcome_of

        return outcome_of(self).value

    def ui_details(self) -> str:
        """The run's final current details in the Temporal UI: outcome, counts, what is left."""
        from reconcile.details import result_details

        return result_details(self)


ReconcileUsageInput.model_rebuild()


ReconcileCarry.model_rebuild()
