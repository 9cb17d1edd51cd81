"""ReconcileAllocations: statuses of the duration contract, findings, inputs, pages and results.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from common.audit import AuditAction
from common.types import ApprovalDecision, Mode

MAX_SAMPLE = 50  # findings listed in a result
DEFAULT_PAGE_SIZE = 200  # allocations (or payment sessions) per page activity
DEFAULT_APPROVAL_TIMEOUT_SECONDS = 7 * 24 * 3600


class TimeUnit(StrEnum):
    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"


class AllocationStatus(StrEnum):
    ACTIVE = "active"
    RELEASING = "releasing"
    RELEASED = "released"
    RELEASE_FAILED = "release_failed"


# Still running (billable): these need an open usage record.
RUNNING_STATUSES = frozenset({AllocationStatus.ACTIVE, AllocationStatus.RELEASING, AllocationStatus.RELEASE_FAILED})


class PaymentStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    FAILED_RECONCILE = "failed_reconcile"
    EXPIRED = "expired"


class FindingKind(StrEnum):
    MISSING_OPEN_USAGE = "missing_open_usage"  # drift 1: running allocation, no open record
    ORPHAN_OPEN_USAGE = "orphan_open_usage"  # drift 2: open record, allocation released
    UNBILLED_CLOSED_USAGE = "unbilled_closed_usage"  # drift 3: closed record, slices without a debit
    PAYMENT_DRIFT = "payment_drift"  # drift 4: failed_reconcile, or completed without a ledger credit
    SLICES_DUE = "slices_due"  # routine: complete slices of a running record not billed yet
    COST_MISMATCH = "cost_mismatch"  # accrued_cost_minor != rate x duration: held, never billed blind
    DEBIT_MISMATCH = "debit_mismatch"  # a posted debit disagrees with its slice: reported
    NO_RATE = "no_rate"  # no rate for the resource class at the record's start: reported
    PAYMENT_NOT_PAID = "payment_not_paid"  # Stripe does not confirm the checkout: reported


class FindingAction(StrEnum):
    OPEN_USAGE = "open_usage"
    CLOSE_USAGE = "close_usage"
    POST_DEBITS = "post_debits"  # ledger debit + usage event per slice, last_billed_at
    LINK_CREDIT = "link_credit"  # the ledger credit exists: link it to the session
    CREATE_CREDIT = "create_credit"
    HOLD = "hold"  # needs a human (reported, never applied automatically)
    REPORT = "report"  # nothing this tool can fix


FIXING_ACTIONS = frozenset({FindingAction.OPEN_USAGE, FindingAction.CLOSE_USAGE, FindingAction.POST_DEBITS,
                            FindingAction.LINK_CREDIT, FindingAction.CREATE_CREDIT})


class FindingStatus(StrEnum):
    OBSERVED = "observed"  # dry-run, or apply while paused
    PROPOSED = "proposed"  # plan mode: waiting for approval
    APPLIED = "applied"
    HELD = "held"
    SKIPPED = "skipped"  # plan approved but stale at apply time, or not in the approved plan
    UNFIXABLE = "unfixable"


class SliceModel(BaseModel):
    index: int
    start: datetime
    end: datetime
    amount_minor: int
    quantity: Decimal


class Finding(BaseModel):
    key: str  # deterministic: kind:entity
    kind: FindingKind
    action: FindingAction
    customer_id: str
    allocation_id: str | None = None
    entity_id: str  # allocation, usage record or payment session
    detail: str
    at: datetime | None = None  # open_usage: start; close_usage: end
    flagged: bool = False  # close_usage at "now" because the release time is unknown
    slices: list[SliceModel] = Field(default_factory=list)  # post_debits
    usage_id: str | None = None  # open_usage: the new record's id

    def line(self) -> str:
        return f"{self.kind.value} {self.entity_id}: {self.detail}"


class Phase(StrEnum):
    ALLOCATIONS = "allocations"
    PAYMENTS = "payments"
    AWAITING_APPROVAL = "awaiting_approval"
    APPLYING = "applying"  # plan mode, approved: the approved plan, re-checked
    DONE = "done"


class ReconcileAllocationsInput(BaseModel):
    """Input of ReconcileAllocations (also the JSON for `temporal workflow start`)."""

    mode: Mode = Mode.DRY_RUN
    customer: str | None = None
    actor: str = Field(default="system", min_length=1)
    reason: str | None = None
    # The run's "now" (slices of running records are billed up to the last midnight before it;
    # orphans with an unknown release time close at it). Default: the workflow's start time.
    as_of: datetime | None = None
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=5000)
    approval_timeout_seconds: int = Field(default=DEFAULT_APPROVAL_TIMEOUT_SECONDS, ge=1)
    carried: AllocationsCarry | None = None

    @field_validator("as_of")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("as_of needs a timezone (e.g. 2026-11-01T12:00:00Z)")
        return v.astimezone(UTC) if v is not None else None


class RunContext(BaseModel):
    run_id: str  # = workflow id (stable across continue-as-new)
    workflow_run_id: str
    customer_id: str | None
    mode: Mode
    actor: str
    reason: str
    as_of: datetime


class StartInput(BaseModel):
    run_id: str
    workflow_run_id: str
    request: ReconcileAllocationsInput
    as_of: datetime


class Cursor(BaseModel):
    customer_id: str
    entity_id: str  # allocation id or payment session id


class Counts(BaseModel):
    allocations_scanned: int = 0
    usage_records_scanned: int = 0
    payment_sessions_scanned: int = 0
    missing_open_usage: int = 0
    orphan_open_usage: int = 0
    unbilled_closed_usage: int = 0
    payment_drift: int = 0
    slices_due: int = 0
    cost_mismatch: int = 0
    debit_mismatch: int = 0
    no_rate: int = 0
    payment_not_paid: int = 0
    fixable: int = 0  # findings with a corrective action (dry-run: what apply would do)
    fixes_applied: int = 0  # one audit row each
    usage_opened: int = 0
    usage_closed: int = 0
    closed_at_unknown_release: int = 0  # closed at as_of, flagged
    debits_posted: int = 0  # one per slice
    amount_debited_minor: int = 0
    usage_events_written: int = 0
    credits_created: int = 0
    credits_linked: int = 0
    skipped_stale: int = 0  # approved plan entries no longer true at apply time
    fix_errors: int = 0  # fixes the database refused (constraint violations): reported, run goes on

    def add(self, o: Counts) -> Counts:
        return Counts(**{k: getattr(self, k) + getattr(o, k) for k in Counts.model_fields})

    def found(self) -> int:
        return sum(getattr(self, k.value) for k in FindingKind)


class PageInput(BaseModel):
    context: RunContext
    phase: Phase  # ALLOCATIONS or PAYMENTS
    cursor: Cursor | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    apply_planned_only: bool = False  # plan mode after approval: fix only the stored plan
    run_paused: bool = False  # this run is paused (its `pause` signal): observe-only


class PageCheckpoint(BaseModel):
    """Heartbeated after every entity: a retried page resumes after the last one done."""

    cursor: Cursor | None = None
    done: int = 0
    counts: Counts = Field(default_factory=Counts)
    sample: list[str] = Field(default_factory=list)
    paused: bool = False


class PageResult(BaseModel):
    next_cursor: Cursor | None
    counts: Counts
    sample: list[str] = Field(default_factory=list)
    paused: bool = False
    # Cancelled part-way (the run was paused): what it did is counted, and the phase goes on
    # after `next_cursor` (None: from the phase's start), not to the next phase.
    interrupted: bool = False


class AllocationsCarry(BaseModel):
    context: RunContext
    phase: Phase = Phase.ALLOCATIONS
    cursor: Cursor | None = None
    applying: bool = False  # the approved plan's apply pass (plan mode)
    counts: Counts = Field(default_factory=Counts)
    applied_counts: Counts = Field(default_factory=Counts)
    sample: list[str] = Field(default_factory=list)
    paused: bool = False  # some page was observe-only because auto-healing or the run was paused
    run_paused: bool = False  # the run's own pause (signals), carried across continue-as-new
    decision: ApprovalDecision | None = None
    approved: bool | None = None


class ApprovalResult(BaseModel):
    run_id: str
    accepted: bool
    approved: bool


class AuditDecisionInput(BaseModel):
    """One of the run's own messages, audited: approve/reject of its plan, pause/resume."""

    context: RunContext
    actor: str
    # A run.* action; an older run's name (allocations.approve_plan) is mapped by AuditInput.
    action: AuditAction | str
    reason: str | None = None
    key: str | None = None  # idempotency key; default `<run id>|<action>` (a decision is made once)


class AllocationsProgress(BaseModel):
    run_id: str
    mode: Mode
    phase: Phase
    counts: Counts
    paused: bool


class RunOutcome(StrEnum):
    COMPLETED = "completed"
    OBSERVE_ONLY = "observe_only"  # apply while auto-healing was paused: found, fixed nothing
    REJECTED = "rejected"


class AllocationsResult(BaseModel):
    run_id: str
    mode: Mode
    outcome: RunOutcome
    customer: str | None
    actor: str
    as_of: datetime
    counts: Counts  # what the scan found (plan mode: the plan)
    applied: Counts | None = None  # plan mode: what the approved apply pass did
    findings: list[str] = Field(default_factory=list)  # sample
    paused: bool = False
    decided_by: str | None = None


ReconcileAllocationsInput.model_rebuild()
AllocationsCarry.model_rebuild()
