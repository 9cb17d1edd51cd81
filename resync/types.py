"""ResyncSubscriptions and ResyncInvoices: inputs, counts, findings, pages, progress and results.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, Field, model_validator

from common.paged import (
    MAX_SAMPLE,
    STRIPE_PAGE_MAX,
    PagedCarry,
    PagedRunContext,
    PagedRunInput,
    RunScope,
)
from common.types import Mode


class ResyncSubscriptionsInput(PagedRunInput):
    """Input of ResyncSubscriptions (also the JSON for `temporal workflow start`). `customer`:
    None = every subscription in Stripe."""

    RUN_NAME = "resync"

    manual: bool = False  # an operator's explicit sync: runs while auto-healing is paused
    carried: ResyncCarry | None = None  # continue-as-new state; callers leave it empty

    @model_validator(mode="after")
    def _check(self) -> ResyncSubscriptionsInput:
        if self.manual and not self.customer:
            raise ValueError("a manual subscription sync needs a customer")
        return self


class MirrorCounts(BaseModel):
    """What a resync of a Stripe mirror table counts (a job's counts add their own)."""

    compared: int = 0  # objects listed by Stripe and found locally
    matched: int = 0
    mismatched: int = 0  # objects with at least one differing field
    fields: dict[str, int] = Field(default_factory=dict)  # mismatches per compared field
    fixed: int = 0  # local rows rewritten from Stripe (apply)
    missing_local: int = 0  # in Stripe, not here
    created: int = 0  # of which created here (apply)
    missing_in_stripe: int = 0  # here, not in Stripe: reported, never deleted
    fix_failures: int = 0

    def add(self, o: Self) -> Self:
        out = self.model_copy(deep=True)
        for k in type(self).model_fields:
            if k == "fields":
                for f, n in o.fields.items():
                    out.fields[f] = out.fields.get(f, 0) + n
            else:
                setattr(out, k, getattr(out, k) + getattr(o, k))
        return out


class ResyncCounts(MirrorCounts):
    active_stripe: int = 0  # the runbook's count comparison: active in Stripe ...
    active_local_before: int = 0  # ... and active here, before and after the run
    active_local_after: int = 0


class ResyncFindings(BaseModel):
    """Samples of ids per finding (capped at MAX_SAMPLE each)."""

    mismatched: list[str] = Field(default_factory=list)
    missing_local: list[str] = Field(default_factory=list)
    missing_in_stripe: list[str] = Field(default_factory=list)

    def merge(self, o: Self) -> Self:
        return type(self)(**{
            k: (getattr(self, k) + getattr(o, k))[:MAX_SAMPLE] for k in type(self).model_fields})


class ResyncPhase(StrEnum):
    STRIPE = "stripe"  # paging Stripe's subscriptions, fixing mismatches
    LOCAL = "local"  # local rows never listed by Stripe
    DONE = "done"


class ResyncCarry(PagedCarry):
    phase: ResyncPhase = ResyncPhase.STRIPE
    pages_done: int = 0
    counts: ResyncCounts = Field(default_factory=ResyncCounts)
    findings: ResyncFindings = Field(default_factory=ResyncFindings)


class ResyncPageInput(BaseModel):
    """A page activity of a mirror resync (subscriptions, invoices)."""

    context: PagedRunContext
    starting_after: str | None = None  # Stripe cursor (last object id seen)
    page_size: int = STRIPE_PAGE_MAX
    max_pages: int = 10
    created_gte: int | None = None  # invoices: only those created since (unix seconds)


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
    context: PagedRunContext
    after: str | None = None  # keyset cursor on stripe_subscription_id
    limit: int = 500


class LocalCheckpoint(BaseModel):
    """Heartbeat of `local_page`: the rows through `done_through` are checked."""

    done_through: str | None = None
    checked: int = 0
    missing_in_stripe: int = 0
    sample: list[str] = Field(default_factory=list)


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


# ---------------------------------------------------------------------------- ResyncInvoices


class ResyncInvoicesInput(PagedRunInput):
    """Input of ResyncInvoices (also the JSON for `temporal workflow start`). `customer`: None =
    every invoice in Stripe; `days`: only invoices created in the last `days` days (None: all)."""

    RUN_NAME = "invoice resync"

    days: int | None = Field(default=None, ge=1, le=3660)
    carried: InvoiceResyncCarry | None = None  # continue-as-new state; callers leave it empty


class InvoiceResyncCounts(MirrorCounts):
    deleted_drafts: int = 0  # local drafts Stripe no longer has (deleted there) ...
    drafts_marked_deleted: int = 0  # ... of which marked deleted here (apply)


class InvoiceResyncFindings(ResyncFindings):
    deleted_drafts: list[str] = Field(default_factory=list)


class InvoiceResyncPhase(StrEnum):
    STRIPE = "stripe"  # paging Stripe's invoices (every status), fixing mismatches
    LOCAL = "local"  # local rows never listed by Stripe: deleted drafts, or missing in Stripe
    DONE = "done"


class InvoiceResyncCarry(PagedCarry):
    phase: InvoiceResyncPhase = InvoiceResyncPhase.STRIPE
    days: int | None = None  # the input's window
    created_gte: int | None = None  # unix seconds: the `days` window, fixed at the start
    pages_done: int = 0
    counts: InvoiceResyncCounts = Field(default_factory=InvoiceResyncCounts)
    findings: InvoiceResyncFindings = Field(default_factory=InvoiceResyncFindings)


class InvoiceResyncCheckpoint(BaseModel):
    """Heartbeat of `invoices_page`: pages through `starting_after` are done."""

    starting_after: str | None = None
    pages: int = 0
    counts: InvoiceResyncCounts = Field(default_factory=InvoiceResyncCounts)
    findings: InvoiceResyncFindings = Field(default_factory=InvoiceResyncFindings)
    paused: bool = False


class InvoicePageResult(BaseModel):
    next_cursor: str | None  # None = done (Stripe has no more; local rows: none left)
    pages: int = 0
    counts: InvoiceResyncCounts
    findings: InvoiceResyncFindings
    paused: bool = False


class InvoiceLocalPageInput(BaseModel):
    context: PagedRunContext
    after: str | None = None  # keyset cursor on stripe_invoice_id
    created_gte: int | None = None
    limit: int = 500


class InvoiceLocalCheckpoint(BaseModel):
    """Heartbeat of `invoices_local_page`: the rows through `done_through` are checked."""

    done_through: str | None = None
    checked: int = 0
    counts: InvoiceResyncCounts = Field(default_factory=InvoiceResyncCounts)
    findings: InvoiceResyncFindings = Field(default_factory=InvoiceResyncFindings)
    paused: bool = False


class InvoiceResyncProgress(BaseModel):
    run_id: str
    mode: Mode
    phase: InvoiceResyncPhase
    pages_done: int
    counts: InvoiceResyncCounts
    paused: bool


class InvoiceResyncResult(BaseModel):
    run_id: str
    mode: Mode
    customer: str | None
    actor: str
    days: int | None
    counts: InvoiceResyncCounts
    findings: InvoiceResyncFindings
    paused: bool  # auto-healing was paused: observe-only, nothing written


ResyncSubscriptionsInput.model_rebuild()
ResyncInvoicesInput.model_rebuild()
