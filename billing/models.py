"""Pydantic models: one argument in and one result out for every workflow, activity, signal,
update and query. Workflows build these, so: no default factories that read clocks or
randomness."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field, model_validator


class Mode(StrEnum):
    DRY_RUN = "dry-run"  # plan and report; no corrective write anywhere
    APPLY = "apply"  # plan and apply (over-reporting beyond epsilon is held for approval)
    PLAN = "plan"  # store the plan, wait for approve/reject, apply exactly that plan


class RunStatus(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    APPLYING = "applying"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


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


class PauseRequest(BaseModel):
    actor: str = Field(min_length=1)
    reason: str | None = None


class AuditInput(BaseModel):
    actor: str
    action: str
    entity_type: str
    entity_id: str
    reason: str | None = None
    after: dict | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    idempotency_key: str | None = None
    customer_id: str | None = None  # the customer the write touched, for `audit --customer`
    before: dict | None = None


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


# ---------------------------------------------------------------------------- Stripe webhooks

STRIPE_EVENT_RETENTION_DAYS = 30  # GET /v1/events only returns the last 30 days


class EventStatus(StrEnum):
    RECEIVED = "received"  # durable in the inbox, effects not yet committed
    PROCESSED = "processed"
    IGNORED = "ignored"  # a type we do not handle
    FAILED = "failed"  # permanent failure, with the error; replay retries it


class ProcessEventInput(BaseModel):
    """Input of ProcessStripeEvent (workflow id `stripe-event-<event_id>`)."""

    event_id: str = Field(min_length=1)


class ProcessEventResult(BaseModel):
    event_id: str
    type: str
    status: EventStatus
    detail: str | None = None
    already_done: bool = False  # an earlier delivery or replay had already processed it


class ReplayWebhooksInput(BaseModel):
    """Input of ReplayWebhooks. Times are UTC; the window defaults to the last `days` days."""

    since: datetime | None = None
    until: datetime | None = None
    days: int = Field(default=3, ge=1, le=STRIPE_EVENT_RETENTION_DAYS)
    types: list[str] = Field(default_factory=list, max_length=20)  # `*` wildcards allowed
    mode: Mode = Mode.DRY_RUN  # dry-run lists, apply processes; plan is not meaningful here
    actor: str = "system"
    page_size: int = Field(default=100, ge=1, le=100)

    @model_validator(mode="after")
    def _check(self) -> ReplayWebhooksInput:
        if self.mode == Mode.PLAN:
            raise ValueError("replay supports dry-run and apply, not plan")
        if len(self.types) > 1 and any("*" in t for t in self.types):
            raise ValueError("a `*` wildcard works only with a single type (Stripe's rule)")
        for t in (self.since, self.until):
            if t is not None and t.tzinfo is None:
                raise ValueError(f"{t} has no time zone: give UTC times, e.g. 2026-11-01T00:00:00Z")
        if self.since and self.until and self.until <= self.since:
            raise ValueError(f"until {self.until} is not after since {self.since}")
        return self


class ReplayWindow(BaseModel):
    since: datetime
    until: datetime
    types: list[str] = Field(default_factory=list)


class ReplayCounts(BaseModel):
    seen: int = 0  # events Stripe listed in the window
    never_received: int = 0  # listed by Stripe, absent from the inbox
    already_processed: int = 0  # processed or ignored before this replay
    pending: int = 0  # in the inbox but received/failed: to be (re)processed
    replayed: int = 0  # processed by this replay
    ignored: int = 0  # replayed, type not handled
    failed: int = 0  # replayed, failed permanently (kept as failed with the error)

    def add(self, other: ReplayCounts) -> ReplayCounts:
        return ReplayCounts(**{k: getattr(self, k) + getattr(other, k) for k in ReplayCounts.model_fields})


class SyncInboxInput(BaseModel):
    window: ReplayWindow  # what to list from Stripe
    dry_run: bool
    sweep_since: datetime | None = None  # where the inbox sweep starts, if before window.since
    page_size: int = 100
    sample_limit: int = 200  # how many would-be-replayed ids a dry-run returns


class SyncInboxResult(BaseModel):
    counts: ReplayCounts
    sample: list[str] = Field(default_factory=list)  # dry-run: event ids that would be replayed


class SyncInboxCheckpoint(BaseModel):
    starting_after: str | None = None
    counts: ReplayCounts = Field(default_factory=ReplayCounts)
    sample: list[str] = Field(default_factory=list)


class PendingCursor(BaseModel):
    created: datetime
    event_id: str


class PendingPageInput(BaseModel):
    window: ReplayWindow
    after: PendingCursor | None = None
    limit: int = 100
    # Rows received after this moment belong to live deliveries still in flight, not to replay.
    received_before: datetime


class PendingPageResult(BaseModel):
    event_ids: list[str]
    next_cursor: PendingCursor | None = None


class ProcessPageInput(BaseModel):
    event_ids: list[str]
    workflow_id: str | None = None


class ProcessPageResult(BaseModel):
    counts: ReplayCounts
    failures: list[str] = Field(default_factory=list)  # "evt_...: error", capped


class ReplayProgress(BaseModel):
    phase: str = "starting"  # listing | processing | done
    counts: ReplayCounts = Field(default_factory=ReplayCounts)


class ReplayResult(BaseModel):
    workflow_id: str
    mode: Mode
    since: datetime
    until: datetime
    types: list[str]
    counts: ReplayCounts
    sample: list[str] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------- operations

AUTOHEAL_WORKFLOW_ID = "billing-autoheal"  # the one AutoHealControl workflow


class AutohealView(BaseModel):
    paused: bool = False
    since: datetime | None = None
    actor: str | None = None
    reason: str | None = None


class SetAutohealInput(BaseModel):
    paused: bool
    actor: str
    reason: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None


class BroadcastInput(BaseModel):
    signal: str  # "pause" | "resume"
    request: PauseRequest
    workflow_types: list[str]


class BroadcastResult(BaseModel):
    signalled: list[str] = Field(default_factory=list)


class AutohealControlInput(BaseModel):
    """AutoHealControl takes no options; the state lives in billing.autoheal_state."""


class CatchUpBackfillInput(BaseModel):
    """Input of CatchUpBackfill (also the JSON for `temporal workflow start` and the UI)."""

    start_date: date
    end_date: date  # inclusive
    mode: Mode = Mode.DRY_RUN
    customers: list[str] = Field(default_factory=list)
    meters: list[str] = Field(default_factory=list)
    max_concurrent_days: int = Field(default=2, ge=1, le=16)
    replay_webhooks: bool = True  # for the part of the range within Stripe's 30-day retention
    resync_subscriptions: bool = True
    actor: str = "system"
    settle_seconds: int | None = None
    auto_approve_over_reporting: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> CatchUpBackfillInput:
        if self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        if (self.end_date - self.start_date).days + 1 > 400:
            raise ValueError("a backfill spans at most 400 days")
        if self.mode == Mode.PLAN:
            raise ValueError("backfill supports dry-run and apply; use reconcile --plan for one window")
        return self


class DayOutcome(StrEnum):
    DONE = "done"  # reconciled by this backfill
    ALREADY_DONE = "already_done"  # a completed run for this day existed: nothing started
    FAILED = "failed"
    RUNNING_ELSEWHERE = "running_elsewhere"  # another backfill's child is on it
    OBSERVE_ONLY = "observe_only"  # auto-healing was paused throughout: reported, not corrected


class DayResult(BaseModel):
    day: date
    run_id: str
    outcome: DayOutcome
    error: str | None = None
    counts: Counts | None = None


class BackfillProgress(BaseModel):
    phase: str = "starting"  # days | replay | resync | done
    days_total: int = 0
    days_done: int = 0
    days_in_flight: list[date] = Field(default_factory=list)
    days_failed: list[date] = Field(default_factory=list)
    days_already_done: int = 0
    paused: bool = False  # auto-healing is paused: no new day starts until `resume`


class BackfillResult(BaseModel):
    workflow_id: str
    mode: Mode
    start_date: date
    end_date: date
    days: list[DayResult]
    counts: Counts  # summed over the days reconciled by this backfill
    replay: dict | None = None  # ReplayWebhooks' result, or why it was skipped
    resync: dict | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def failed_days(self) -> list[date]:
        return [d.day for d in self.days if d.outcome in (DayOutcome.FAILED, DayOutcome.OBSERVE_ONLY)]


class CompletedRunsInput(BaseModel):
    run_ids: list[str]


class CompletedRunsResult(BaseModel):
    completed: list[str]
