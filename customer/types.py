"""One customer end to end: InspectCustomer (Stripe and Postgres side by side, every domain) and
RepairCustomer (that customer's resyncs, credit repair and usage reconciliation in one run).

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer, model_validator

from billing.policy import MAX_SETTLE_SECONDS, to_stripe_value
from common.paged import PagedRunContext
from common.types import STRIPE_EVENT_RETENTION_DAYS, Mode, refuse_plan_mode

CUSTOMER_REF_MAX = 200
STRIPE_CUSTOMER_PREFIX = "cus_"
_STRIPE_CUSTOMER_ID = re.compile(r"^cus_[A-Za-z0-9]+$")


def customer_ref(value: str) -> str:
    """Our customer id or a Stripe customer id (`cus_...`); refuses what can be neither."""
    if not value.strip():
        raise ValueError("customer id must not be blank")
    if len(value) > CUSTOMER_REF_MAX:
        raise ValueError(f"customer id is longer than {CUSTOMER_REF_MAX} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(f"customer id {value!r} contains spaces or control characters")
    if value.startswith(STRIPE_CUSTOMER_PREFIX) and not _STRIPE_CUSTOMER_ID.match(value):
        raise ValueError(f"{value!r} is not a Stripe customer id (cus_ followed by letters and digits)")
    return value


CustomerRef = Annotated[str, AfterValidator(customer_ref)]


def _quantity_text(d: Decimal) -> str:
    return to_stripe_value(d) if d.is_finite() else str(d)


# A usage quantity in JSON: exact text without exponent or trailing zeros ("40", "2.5"). A
# corrupt counter (NaN, Infinity: the application's row) is shown as it is.
Quantity = Annotated[Decimal, Field(allow_inf_nan=True),
                     PlainSerializer(_quantity_text, return_type=str, when_used="json")]


class CustomerError(StrEnum):
    """`ApplicationError.type` of this job's permanent failures (besides common.paged's
    UnknownCustomer, which a repair of an unknown customer fails with: bad input, exit 2)."""

    # `customer show` of an id that neither Postgres nor Stripe knows: not found, exit 1.
    NOT_FOUND = "CustomerNotFound"


class Domain(StrEnum):
    CUSTOMER = "customer"
    SUBSCRIPTIONS = "subscriptions"
    INVOICES = "invoices"
    CREDITS = "credits"
    USAGE = "usage"


class Mismatch(BaseModel):
    """One thing Postgres and Stripe disagree on. `entity`: the object (subscription, invoice,
    checkout session, `meter day` ...); `local`/`stripe`: the two values (None: absent there)."""

    domain: Domain
    entity: str
    field: str
    local: Any = None
    stripe: Any = None
    detail: str = ""


class Pair(BaseModel):
    """One object on both sides, each in the shape the resync compares (None: absent there)."""

    id: str
    local: dict[str, Any] | None = None
    stripe: dict[str, Any] | None = None


class LedgerEntry(BaseModel):
    id: int
    amount: int  # minor units
    source: str
    reason: str | None = None
    actor: str | None = None
    created_at: datetime


class Purchase(BaseModel):
    """A paid credit checkout in Stripe and the ledger rows that granted it."""

    checkout_session_id: str
    credits: int  # metadata.credits: what it must grant
    created: datetime | None = None
    granted: int = 0  # ledger rows of this session (exactly one when right)
    granted_amount: int = 0


class Credits(BaseModel):
    balance: int | None = None  # credit_balances (None: no row)
    ledger_sum: int = 0
    ledger: list[LedgerEntry] = Field(default_factory=list)  # the latest rows
    purchases: list[Purchase] = Field(default_factory=list)  # Stripe's latest paid credit checkouts
    invalid_purchases: list[str] = Field(default_factory=list)  # checkouts with unusable metadata


class MeterUsage(BaseModel):
    """This period's totals of one meter: L ledger, C counter, P our live pushes, S Stripe."""

    meter: str
    ledger: Quantity = Decimal(0)
    counter: Quantity | None = None
    quota: Quantity | None = None
    pushed: Quantity = Decimal(0)
    stripe: Quantity | None = None  # None: not a Stripe meter in scope, or Stripe refused the read


class UsageFinding(BaseModel):
    """A key the usage reconciliation would act on (its `plan_batch`, observe-only)."""

    key: str
    kind: str  # billing.policy.FindingKind
    meter: str
    day: date | None = None
    period_start: date | None = None
    ledger: Quantity | None = None
    counter: Quantity | None = None
    pushed: Quantity | None = None
    stripe: Quantity | None = None
    action: str | None = None
    detail: str = ""


class Usage(BaseModel):
    period_start: date
    period_end: date  # exclusive
    through: date  # today (UTC): the last day compared
    meters: list[MeterUsage] = Field(default_factory=list)
    findings: list[UsageFinding] = Field(default_factory=list)


class OpenFinding(BaseModel):
    """A discrepancy the customer's latest usage run left open."""

    run_id: str
    key: str
    kind: str
    meter: str
    usage_day: date | None = None
    status: str
    diff: Quantity | None = None
    action: str | None = None
    detail: str | None = None


class InboxEvent(BaseModel):
    event_id: str
    type: str
    created: datetime
    status: str
    attempts: int
    source: str | None = None
    error: str | None = None


class AuditRow(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    reason: str | None = None
    before: Any = None
    after: Any = None
    workflow_id: str | None = None
    run_id: str | None = None
    correlation_id: str | None = None


class CustomerSnapshot(BaseModel):
    """Everything known about one customer, read once: Stripe and Postgres side by side."""

    ref: str  # as asked
    customer_id: str | None  # ours (None: Stripe knows it, Postgres does not)
    stripe_customer_id: str | None
    read_at: datetime
    customer: Pair
    subscriptions: list[Pair] = Field(default_factory=list)
    invoices: list[Pair] = Field(default_factory=list)
    credits: Credits = Field(default_factory=Credits)
    usage: Usage | None = None  # None: no local customer (no ledger)
    findings_run: str | None = None  # the latest usage run that covered the customer
    findings: list[OpenFinding] = Field(default_factory=list)
    events: list[InboxEvent] = Field(default_factory=list)
    audit: list[AuditRow] = Field(default_factory=list)


# ---------------------------------------------------------------------------- InspectCustomer

MAX_LISTED = 100


class InspectCustomerInput(BaseModel):
    """Input of InspectCustomer (also the JSON for `temporal workflow start`)."""

    customer: CustomerRef
    invoices: int = Field(default=10, ge=1, le=MAX_LISTED)  # the latest N of each side
    events: int = Field(default=20, ge=1, le=MAX_LISTED)  # the latest inbox events
    audit_rows: int = Field(default=20, ge=1, le=MAX_LISTED)
    ledger_rows: int = Field(default=20, ge=1, le=MAX_LISTED)


class CustomerView(BaseModel):
    snapshot: CustomerSnapshot
    mismatches: list[Mismatch] = Field(default_factory=list)


# ---------------------------------------------------------------------------- RepairCustomer


class RepairCustomerInput(BaseModel):
    """Input of RepairCustomer (also the JSON for `temporal workflow start`). `customer`: ours or
    the Stripe id of a customer Postgres knows."""

    customer: CustomerRef
    mode: Mode = Mode.DRY_RUN
    actor: str = Field(default="system", min_length=1)
    reason: str | None = None  # recorded in every audit row (default: "customer repair")
    settle_seconds: int | None = Field(default=None, ge=0, le=MAX_SETTLE_SECONDS)  # usage verify timer
    credit_days: int = Field(default=STRIPE_EVENT_RETENTION_DAYS, ge=1, le=STRIPE_EVENT_RETENTION_DAYS)

    @model_validator(mode="after")
    def _refuse_plan(self) -> RepairCustomerInput:
        refuse_plan_mode(self.mode, "customer repair")
        return self


class ResolveInput(BaseModel):
    customer: CustomerRef


class ResolvedCustomer(BaseModel):
    customer_id: str
    stripe_customer_id: str
    audit_high_water: int  # the audit log's last id when the repair started


class RepairStep(StrEnum):
    """A repair's steps, in order: the customer row (an activity), then each domain as a child
    workflow of the job that owns it."""

    CUSTOMER = "customer"  # email, name, deletion from Stripe (customer.sync_fields)
    SUBSCRIPTIONS = "subscriptions"  # ResyncSubscriptions
    INVOICES = "invoices"  # ResyncInvoices
    CREDITS = "credits"  # RepairCredits
    USAGE = "usage"  # ReconcileUsage


class StepResult(BaseModel):
    step: RepairStep
    workflow_id: str
    summary: str  # what it found and did, in one line
    paused: bool = False  # auto-healing was paused: the step observed and wrote nothing
    failed: str | None = None


class SyncCustomerInput(BaseModel):
    context: PagedRunContext  # the repair as a run: scope, mode, actor, reason, ids


class FixesInput(BaseModel):
    customer_id: str
    after_id: int
    workflow_ids: list[str]


class RepairProgress(BaseModel):
    workflow_id: str
    customer_id: str | None
    mode: Mode
    phase: str  # resolving, inspecting, a RepairStep, verifying, done
    current_workflow_id: str | None = None  # the running child (approve it if it waits)
    steps: list[StepResult] = Field(default_factory=list)


class RepairCustomerResult(BaseModel):
    workflow_id: str
    customer_id: str
    stripe_customer_id: str
    mode: Mode
    actor: str
    before: list[Mismatch]  # what the repair found (what it would do while paused or dry)
    after: list[Mismatch]  # what is left
    steps: list[StepResult]
    fixes: list[AuditRow]  # the audit rows its steps wrote: one per fix
    paused: bool  # auto-healing was paused: nothing was written

    @property
    def failed(self) -> bool:
        return any(s.failed for s in self.steps)

    def ui_outcome(self) -> str:
        """`BillingOutcome` of the repair (common/ui.py upserts it when the run ends)."""
        if self.failed or (self.mode == Mode.APPLY and not self.paused and self.after):
            return "needs_attention"
        if not self.before:
            return "clean"
        if self.paused:
            return "observe_only"
        return "drift_fixed" if self.mode == Mode.APPLY else "drift_found"
