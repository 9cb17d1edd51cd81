"""ReconcileUsage: inputs, results, the carried state, page and plan models.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

from common.types import Mode, RunStatus


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
    stale_skipped: int = 0  # planned actions skipped because the state changed since the plan
    unmetered_usage: int = 0  # (customer, meter) with usage but no active Stripe meter: never billed
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
    # Policy overrides; None = the worker's settings.
    epsilon: Decimal | None = None
    settle_seconds: int | None = None
    auto_approve_over_reporting: bool | None = None
    page_size: int | None = Field(default=None, ge=1, le=5000)
    approval_timeout_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    # Carried across continue-as-new; callers leave it empty.
    carried: ReconcileCarry | None = None

    @model_validator(mode="after")
    def _check_window(self) -> ReconcileUsageInput:
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        return self


class MeterInfo(BaseModel):
    event_name: str
    stripe_meter_id: str


class Policy(BaseModel):
    epsilon: Decimal
    settle_seconds: int
    auto_approve_over_reporting: bool
    page_size: int


class RunContext(BaseModel):
    run_id: str  # = workflow id
    workflow_run_id: str
    mode: Mode
    window_start: date
    window_end: date
    customers: list[str] = Field(default_factory=list)
    meters: list[MeterInfo] = Field(default_factory=list)  # Stripe meters in scope
    meter_filter: list[str] = Field(default_factory=list)  # as asked; empty = every meter
    policy: Policy
    actor: str = "system"
    # Auto-healing was paused (billing-recon pause) when the run started: it starts observe-only.
    globally_paused: bool = False


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
    observe_only: bool = False  # paused or dry-run: detect and report, never correct
    verify: bool = False  # second pass after the settle timer: only this run's keys


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


class ApprovalDecision(BaseModel):
    actor: str = Field(min_length=1)
    reason: str | None = None


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


ReconcileUsageInput.model_rebuild()


ReconcileCarry.model_rebuild()
