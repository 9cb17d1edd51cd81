"""RepairCredits and AdjustCredits: inputs, counts, ledger checks, pages and results.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

from common.paged import MAX_SAMPLE, STRIPE_PAGE_MAX, PagedCarry, PagedRunContext, PagedRunInput
from common.types import STRIPE_EVENT_RETENTION_DAYS, Mode


class RepairCreditsInput(PagedRunInput):
    """Input of RepairCredits (also the JSON for `temporal workflow start`)."""

    RUN_NAME = "credit repair"

    days: int = Field(default=STRIPE_EVENT_RETENTION_DAYS, ge=1, le=STRIPE_EVENT_RETENTION_DAYS)
    carried: RepairCarry | None = None  # continue-as-new state; callers leave it empty


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
    # Apply: writes refused because the customer's ledger sums below zero. Nothing is written
    # for such a customer (no grant, no balance repair); every other customer is repaired.
    grants_refused: int = 0
    refused_customers: int = 0  # customers whose balance repair was refused (left untouched)

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
    refused: list[str] = Field(default_factory=list)  # "customer: what was refused and why"

    def merge(self, o: CreditFindings) -> CreditFindings:
        return CreditFindings(**{
            k: (getattr(self, k) + getattr(o, k))[:MAX_SAMPLE] for k in CreditFindings.model_fields})


class BalanceOutcome(StrEnum):
    """What one credit write of RepairCredits did."""

    WRITTEN = "written"
    UNCHANGED = "unchanged"  # nothing to do (any more)
    REFUSED = "refused"  # the customer's ledger sums below zero: nothing written for it


class RepairPhase(StrEnum):
    STRIPE_EVENTS = "stripe_events"
    INBOX = "inbox"
    DUPLICATES = "duplicates"
    BALANCES = "balances"
    INVOICES = "invoices"
    USAGE = "usage"
    DONE = "done"


class RepairCarry(PagedCarry):
    phase: RepairPhase = RepairPhase.STRIPE_EVENTS
    since_ts: int  # Stripe event window, unix seconds
    until_ts: int
    counts: CreditCounts = Field(default_factory=CreditCounts)
    checks: LedgerChecks = Field(default_factory=LedgerChecks)
    findings: CreditFindings = Field(default_factory=CreditFindings)


class CheckoutSource(StrEnum):
    STRIPE = "stripe"
    INBOX = "inbox"


class CheckoutPageInput(BaseModel):
    context: PagedRunContext
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
    """Heartbeat of a credits page activity: done through `cursor` (balances: the customers
    through `cursor`, `counts.customers_checked` of them)."""

    cursor: str | None = None
    pages: int = 0
    counts: CreditCounts = Field(default_factory=CreditCounts)
    findings: CreditFindings = Field(default_factory=CreditFindings)
    paused: bool = False


class BalancePageInput(BaseModel):
    context: PagedRunContext
    after: str | None = None  # customer_id keyset cursor
    limit: int = 500


class DuplicatesInput(BaseModel):
    context: PagedRunContext


class InvoiceCheckInput(BaseModel):
    context: PagedRunContext
    starting_after: str | None = None
    page_size: int = STRIPE_PAGE_MAX
    max_pages: int = 10


class InvoiceCheckResult(BaseModel):
    next_cursor: str | None
    checked: int
    missing: int
    sample: list[str] = Field(default_factory=list)


class InvoiceCheckpoint(BaseModel):
    """Heartbeat of `paid_invoices_page`: Stripe's pages through `cursor` are checked."""

    cursor: str | None = None
    checked: int = 0
    missing: int = 0
    sample: list[str] = Field(default_factory=list)


class UsageCheckInput(BaseModel):
    context: PagedRunContext
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


IDEMPOTENCY_KEY_MAX = 200


def default_adjust_key(customer: str, amount: int, reason: str, actor: str) -> str:
    """The idempotency key of a manual adjustment when the operator gives none: the same
    customer, amount, reason and actor are the same adjustment. `<customer>:<amount>:<16 hex of
    sha256 of [customer, amount, reason, actor]>`; a second, deliberate, identical adjustment
    needs its own key (or another reason)."""
    digest = hashlib.sha256(json.dumps([customer, amount, reason, actor]).encode()).hexdigest()[:16]
    return f"{customer}:{amount:+d}:{digest}"[-IDEMPOTENCY_KEY_MAX:]


class AdjustCreditsInput(BaseModel):
    """Input of AdjustCredits: a manual credit or debit, audited with actor and reason. Its
    identity is `idempotency_key` (ledger source `manual:<key>`): the same key applies once.
    Without a key (older starts, `temporal workflow start` without one) the workflow id is the
    identity (`manual:<workflow id>`)."""

    customer: str = Field(min_length=1)
    amount: int  # minor units; > 0 credits, < 0 debits
    reason: str = Field(min_length=1)
    actor: str = Field(min_length=1)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=IDEMPOTENCY_KEY_MAX)

    @model_validator(mode="after")
    def _check(self) -> AdjustCreditsInput:
        if self.amount == 0:
            raise ValueError("amount must not be 0")
        if not self.reason.strip():
            raise ValueError("reason must not be blank")
        if self.idempotency_key is not None and not self.idempotency_key.strip():
            raise ValueError("idempotency_key must not be blank")
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
    source: str  # the ledger row's business key: manual:<idempotency key> (or manual:<workflow id>)
    ledger_id: int
    actor: str
    reason: str
    # The key's ledger row existed already (an earlier command with the same key, or a retried
    # activity): nothing was written now; balance_before = balance_after = the balance now.
    already_applied: bool = False
    idempotency_key: str | None = None


RepairCreditsInput.model_rebuild()
