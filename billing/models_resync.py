"""Pydantic models of the resync family: ResyncSubscriptions, RepairCredits (with its ledger
consistency checks) and AdjustCredits. One argument in, one result out, for every workflow,
activity and query. Workflows build these: no default factories reading clocks or randomness."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

from billing.models import STRIPE_EVENT_RETENTION_DAYS, Mode

STRIPE_PAGE_MAX = 100  # Stripe's largest list page
MAX_SAMPLE = 50  # ids listed per finding in a report


def _no_plan(mode: Mode, what: str) -> None:
    if mode == Mode.PLAN:
        raise ValueError(f"{what} supports dry-run and apply, not plan")


class ErrorType(StrEnum):
    """`ApplicationError.type` of the permanent failures of this family."""

    UNKNOWN_CUSTOMER = "UnknownCustomer"
    NEGATIVE_BALANCE = "NegativeBalance"
    INVALID_CHECKOUT = "InvalidCheckout"


# ---------------------------------------------------------------------------- shared


class ResolveScopeInput(BaseModel):
    customer_id: str | None = None  # our customer id; None = every customer


class RunScope(BaseModel):
    """Who a run covers. `stripe_customer_id` is set when `customer_id` is."""

    customer_id: str | None = None
    stripe_customer_id: str | None = None


class RunContext(BaseModel):
    run_id: str  # = workflow id (stable across continue-as-new)
    workflow_run_id: str
    scope: RunScope
    mode: Mode
    actor: str
    reason: str
    # An explicit operator action (`subscriptions sync`): proceeds while auto-healing is paused.
    manual: bool = False


class ContextInput(BaseModel):
    """Start of a run: resolve the scope (unknown customer -> non-retryable error) and clear the
    run's scratch rows left by an earlier run under the same workflow id."""

    run_id: str
    workflow_run_id: str
    customer: str | None = None
    mode: Mode
    actor: str
    reason: str
    manual: bool = False


class CleanupInput(BaseModel):
    run_id: str


# ---------------------------------------------------------------------------- ResyncSubscriptions


class ResyncSubscriptionsInput(BaseModel):
    """Input of ResyncSubscriptions (also the JSON for `temporal workflow start`)."""

    customer: str | None = None  # our customer id; None = every subscription in Stripe
    mode: Mode = Mode.DRY_RUN
    actor: str = Field(default="system", min_length=1)
    reason: str | None = None  # recorded in every audit row
    manual: bool = False  # an operator's explicit sync: runs while auto-healing is paused
    page_size: int = Field(default=STRIPE_PAGE_MAX, ge=1, le=STRIPE_PAGE_MAX)
    pages_per_activity: int = Field(default=10, ge=1, le=1000)
    carried: ResyncCarry | None = None  # continue-as-new state; callers leave it empty

    @model_validator(mode="after")
    def _check(self) -> ResyncSubscriptionsInput:
        _no_plan(self.mode, "resync")
        if self.manual and not self.customer:
            raise ValueError("a manual subscription sync needs a customer")
        return self


class ResyncCounts(BaseModel):
    compared: int = 0  # subscriptions listed by Stripe and found locally
    matched: int = 0
    mismatched: int = 0  # subscriptions with at least one differing field
    fields: dict[str, int] = Field(default_factory=dict)  # mismatches per compared field
    fixed: int = 0  # local rows rewritten from Stripe (apply)
    missing_local: int = 0  # in Stripe, not here
    created: int = 0  # of which created here (apply)
    missing_in_stripe: int = 0  # here, not in Stripe: reported, never deleted
    active_stripe: int = 0  # the runbook's count comparison: active in Stripe ...
    active_local_before: int = 0  # ... and active here, before and after the run
    active_local_after: int = 0
    fix_failures: int = 0

    def add(self, o: ResyncCounts) -> ResyncCounts:
        out = self.model_copy(deep=True)
        for k in ResyncCounts.model_fields:
            if k == "fields":
                for f, n in o.fields.items():
                    out.fields[f] = out.fields.get(f, 0) + n
            else:
                setattr(out, k, getattr(out, k) + getattr(o, k))
        return out


class ResyncFindings(BaseModel):
    """Samples of ids per finding (capped at MAX_SAMPLE each)."""

    mismatched: list[str] = Field(default_factory=list)
    missing_local: list[str] = Field(default_factory=list)
    missing_in_stripe: list[str] = Field(default_factory=list)

    def merge(self, o: ResyncFindings) -> ResyncFindings:
        return ResyncFindings(**{
            k: (getattr(self, k) + getattr(o, k))[:MAX_SAMPLE] for k in ResyncFindings.model_fields})


class ResyncPhase(StrEnum):
    STRIPE = "stripe"  # paging Stripe's subscriptions, fixing mismatches
    LOCAL = "local"  # local rows never listed by Stripe
    DONE = "done"


class ResyncCarry(BaseModel):
    context: RunContext
    phase: ResyncPhase = ResyncPhase.STRIPE
    cursor: str | None = None
    pages_done: int = 0
    counts: ResyncCounts = Field(default_factory=ResyncCounts)
    findings: ResyncFindings = Field(default_factory=ResyncFindings)
    paused: bool = False  # an apply page found auto-healing paused and wrote nothing


class ResyncPageInput(BaseModel):
    context: RunContext
    starting_after: str | None = None  # Stripe cursor (last subscription id seen)
    page_size: int = STRIPE_PAGE_MAX
    max_pages: int = 10


class ResyncCheckpoint(BaseModel):
    """Heartbeat of a page activity: pages through `starting_after` are done."""

    starting_after: str | None = None
    pages: int = 0
    counts: ResyncCounts = Field(default_factory=ResyncCounts)
    findings: ResyncFindings = Field(default_factory=ResyncFindings)
    paused: bool = False


class ResyncPageResult(BaseModel):
    next_cursor: str | None  # None = Stripe has no more
    pages: int
    counts: ResyncCounts
    findings: ResyncFindings
    paused: bool = False


class LocalPageInput(BaseModel):
    context: RunContext
    after: str | None = None  # keyset cursor on stripe_subscription_id
    limit: int = 500


class LocalPageResult(BaseModel):
    next_cursor: str | None
    missing_in_stripe: int
    sample: list[str] = Field(default_factory=list)


class CountActiveInput(BaseModel):
    scope: RunScope


class CountActiveResult(BaseModel):
    active: int


class ResyncProgress(BaseModel):
    run_id: str
    mode: Mode
    phase: ResyncPhase
    pages_done: int
    counts: ResyncCounts
    paused: bool


class CountCheck(BaseModel):
    """The runbook's daily comparison: active subscriptions here vs in Stripe."""

    active_local_before: int
    active_local_after: int
    active_stripe: int
    matches: bool


class ResyncResult(BaseModel):
    run_id: str
    mode: Mode
    customer: str | None
    actor: str
    counts: ResyncCounts
    findings: ResyncFindings
    count_check: CountCheck
    paused: bool  # auto-healing was paused: observe-only, nothing written


# ---------------------------------------------------------------------------- RepairCredits


class RepairCreditsInput(BaseModel):
    """Input of RepairCredits (also the JSON for `temporal workflow start`)."""

    customer: str | None = None
    mode: Mode = Mode.DRY_RUN
    actor: str = Field(default="system", min_length=1)
    reason: str | None = None
    days: int = Field(default=STRIPE_EVENT_RETENTION_DAYS, ge=1, le=STRIPE_EVENT_RETENTION_DAYS)
    page_size: int = Field(default=STRIPE_PAGE_MAX, ge=1, le=STRIPE_PAGE_MAX)
    pages_per_activity: int = Field(default=10, ge=1, le=1000)
    carried: RepairCarry | None = None

    @model_validator(mode="after")
    def _check(self) -> RepairCreditsInput:
        _no_plan(self.mode, "credit repair")
        return self


class CreditCounts(BaseModel):
    checkout_events: int = 0  # checkout events read (Stripe's list and the inbox)
    purchases: int = 0  # distinct completed, paid credit purchases among them
    granted_ok: int = 0  # purchases with a grant in the ledger
    missing_grants: int = 0  # purchases without one
    grants_made: int = 0  # of which granted now (apply)
    duplicate_grants: int = 0  # sessions with more than one ledger row: reported, not removed
    invalid_checkouts: int = 0  # bad metadata.credits: reported
    customers_checked: int = 0
    balance_mismatches: int = 0  # credit_balances != ledger sum
    balances_repaired: int = 0
    negative_ledger: int = 0  # ledger sum < 0: cannot be a balance (dry-run reports it)

    def add(self, o: CreditCounts) -> CreditCounts:
        return CreditCounts(**{k: getattr(self, k) + getattr(o, k) for k in CreditCounts.model_fields})


class LedgerChecks(BaseModel):
    """The runbooks' ledger consistency checks (reported, not fixed)."""

    paid_invoices_checked: int = 0
    paid_invoices_missing_locally: int = 0
    unpushed_usage_keys: int = 0  # (customer, meter, closed period) with usage never pushed
    checkouts_without_ledger_entry: int = 0  # completed purchases still without a grant
    invoice_sample: list[str] = Field(default_factory=list)
    usage_sample: list[str] = Field(default_factory=list)  # "customer|meter|period: L vs P"
    checkout_sample: list[str] = Field(default_factory=list)


class CreditFindings(BaseModel):
    missing_grants: list[str] = Field(default_factory=list)  # cs ids
    duplicate_grants: list[str] = Field(default_factory=list)  # "cs id: n rows (sources)"
    balance_mismatches: list[str] = Field(default_factory=list)  # "customer: balance vs ledger"
    invalid_checkouts: list[str] = Field(default_factory=list)

    def merge(self, o: CreditFindings) -> CreditFindings:
        return CreditFindings(**{
            k: (getattr(self, k) + getattr(o, k))[:MAX_SAMPLE] for k in CreditFindings.model_fields})


class RepairPhase(StrEnum):
    STRIPE_EVENTS = "stripe_events"
    INBOX = "inbox"
    DUPLICATES = "duplicates"
    BALANCES = "balances"
    INVOICES = "invoices"
    USAGE = "usage"
    DONE = "done"


class RepairCarry(BaseModel):
    context: RunContext
    since_ts: int  # Stripe event window, unix seconds
    until_ts: int
    phase: RepairPhase = RepairPhase.STRIPE_EVENTS
    cursor: str | None = None
    counts: CreditCounts = Field(default_factory=CreditCounts)
    checks: LedgerChecks = Field(default_factory=LedgerChecks)
    findings: CreditFindings = Field(default_factory=CreditFindings)
    paused: bool = False


class CheckoutSource(StrEnum):
    STRIPE = "stripe"
    INBOX = "inbox"


class CheckoutPageInput(BaseModel):
    context: RunContext
    source: CheckoutSource
    cursor: str | None = None  # Stripe: event id; inbox: "<unix micros>|<event id>"
    since_ts: int
    until_ts: int
    page_size: int = STRIPE_PAGE_MAX
    max_pages: int = 10


class CreditPageResult(BaseModel):
    next_cursor: str | None
    counts: CreditCounts
    findings: CreditFindings
    paused: bool = False


class CreditCheckpoint(BaseModel):
    cursor: str | None = None
    pages: int = 0
    counts: CreditCounts = Field(default_factory=CreditCounts)
    findings: CreditFindings = Field(default_factory=CreditFindings)
    paused: bool = False


class BalancePageInput(BaseModel):
    context: RunContext
    after: str | None = None  # customer_id keyset cursor
    limit: int = 500


class DuplicatesInput(BaseModel):
    context: RunContext


class InvoiceCheckInput(BaseModel):
    context: RunContext
    starting_after: str | None = None
    page_size: int = STRIPE_PAGE_MAX
    max_pages: int = 10


class InvoiceCheckResult(BaseModel):
    next_cursor: str | None
    checked: int
    missing: int
    sample: list[str] = Field(default_factory=list)


class UsageCheckInput(BaseModel):
    context: RunContext
    today_iso: str  # the workflow's today (UTC); periods before its period are closed


class UsageCheckResult(BaseModel):
    keys: int
    sample: list[str] = Field(default_factory=list)


class RepairProgress(BaseModel):
    run_id: str
    mode: Mode
    phase: RepairPhase
    counts: CreditCounts
    paused: bool


class RepairResult(BaseModel):
    run_id: str
    mode: Mode
    customer: str | None
    actor: str
    counts: CreditCounts
    checks: LedgerChecks
    findings: CreditFindings
    paused: bool


# ---------------------------------------------------------------------------- AdjustCredits


class AdjustCreditsInput(BaseModel):
    """Input of AdjustCredits: a manual credit or debit, audited with actor and reason."""

    customer: str = Field(min_length=1)
    amount: int  # minor units; > 0 credits, < 0 debits
    reason: str = Field(min_length=1)
    actor: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> AdjustCreditsInput:
        if self.amount == 0:
            raise ValueError("amount must not be 0")
        if not self.reason.strip():
            raise ValueError("reason must not be blank")
        return self


class AdjustActivityInput(BaseModel):
    request: AdjustCreditsInput
    workflow_id: str
    workflow_run_id: str


class AdjustCreditsResult(BaseModel):
    workflow_id: str
    customer: str
    amount: int
    balance_before: int
    balance_after: int
    source: str  # the ledger row's business key: manual:<workflow id>
    ledger_id: int
    actor: str
    reason: str
    already_applied: bool = False  # a retried activity found its own ledger row


ResyncSubscriptionsInput.model_rebuild()
RepairCreditsInput.model_rebuild()
