"""A usage finding (a row of `billing.discrepancies`) and its correction plan: a counter
repair or the corrections of one Stripe key, stored as the discrepancy's `action_params`.

Built by the pure `plan_batch` (reconcile/scan.py), stored by reconcile/store.py and applied by
the correction writer (reconcile/corrections.py); activities only, never workflow payloads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter

from billing.policy import FindingKind, PlannedPush
from reconcile.types import DiscrepancyStatus


class CounterRepair(BaseModel):
    """Set a counter to the ledger's total by compare-and-set."""

    period_start: date
    period_end: date
    # The value read (None: no counter row); changed since = stale. A corrupt counter (NaN,
    # Infinity: the application's row) is repaired like any other: compare-and-set on it.
    expected_before: Decimal | None = Field(allow_inf_nan=True)
    value: Decimal  # the ledger total L
    quota: Decimal | None = Field(default=None, allow_inf_nan=True)


class CounterCorrection(BaseModel):
    counter: CounterRepair

    @property
    def action(self) -> str:
        return "set_counter"

    @property
    def needs_approval(self) -> bool:
        return False


class StripeCorrection(BaseModel):
    """The corrections of one Stripe key (customer, meter, UTC day), applied in this order:
    cancel our own recent pushes, mark lost pushes failed, push one meter event."""

    expected_pushed: Decimal  # P when planned (the apply-time re-check reads the outbox again)
    needs_approval: bool = False  # over-reporting beyond epsilon without auto-approve
    cancel: list[str] = Field(default_factory=list)  # identifiers of our pushes to cancel
    mark_failed: list[str] = Field(default_factory=list)  # our pushes Stripe lost
    # The event time of a compensation replacing a cancel Stripe refuses (past its 24 h).
    timestamp: datetime | None = None
    push: PlannedPush | None = None

    @property
    def action(self) -> str:
        return "+".join(x for x in [
            "cancel" if self.cancel else "", f"push_{self.push.kind}" if self.push else ""] if x)


class AdjustmentKind(StrEnum):
    """`invoice_adjustments.kind` (the SQL CHECK constraint lists the same values)."""

    INVOICE_ITEM = "invoice_item"  # under-billing: a pending item, billed on the next invoice
    CREDIT_NOTE = "credit_note"  # over-billing on an open or paid invoice
    BALANCE_CREDIT = "balance_credit"  # over-billing on an uncollectible invoice (or past creditable)


class InvoiceAdjustment(BaseModel):
    """Money for a closed period (its invoice is final), through the outbox
    `invoice_adjustments` under `identifier` (also the Stripe Idempotency-Key). Only planned in
    plan mode, applied after approval, re-checked at apply time (reconcile/adjustments.py)."""

    adjustment: AdjustmentKind
    identifier: str
    stripe_invoice_id: str
    period_start: datetime
    period_end: datetime
    quantity: Decimal  # units: > 0 under-billed, < 0 over-billed
    amount: int  # minor units, > 0
    currency: str
    price_id: str
    billed: Decimal  # what the invoice billed plus earlier adjustments, when planned
    ledger: Decimal  # the period's ledger when planned
    description: str

    @property
    def action(self) -> str:
        return str(self.adjustment)

    @property
    def needs_approval(self) -> bool:
        return True


def _plan_shape(v: Any) -> str:
    if isinstance(v, dict):
        return "counter" if "counter" in v else "adjustment" if "adjustment" in v else "stripe"
    return ("counter" if isinstance(v, CounterCorrection)
            else "adjustment" if isinstance(v, InvoiceAdjustment) else "stripe")


# What a finding's correction does: stored as `discrepancies.action_params` (its JSON) and read
# back by validation. The JSON is the shape action_params always had (the counter's values
# under "counter"; a Stripe key's fields at the top), so rows of older versions validate as is.
CorrectionPlan = Annotated[
    Annotated[CounterCorrection, Tag("counter")] | Annotated[StripeCorrection, Tag("stripe")]
    | Annotated[InvoiceAdjustment, Tag("adjustment")],
    Discriminator(_plan_shape),
]
_CORRECTION_PLAN: TypeAdapter[CorrectionPlan] = TypeAdapter(CorrectionPlan)


def plan_to_json(plan: CorrectionPlan | None) -> dict[str, Any] | None:
    return None if plan is None else plan.model_dump(mode="json")


def plan_from_json(stored: Any) -> CorrectionPlan | None:
    """`action_params` as stored (a dict, or JSON text without the pool's jsonb codec)."""
    if stored is None:
        return None
    if isinstance(stored, str | bytes):
        return _CORRECTION_PLAN.validate_json(stored)
    return _CORRECTION_PLAN.validate_python(stored)


@dataclass(frozen=True, slots=True)
class Finding:
    """One discrepancy (a row of `billing.discrepancies`) and the correction that fixes it."""

    key: str  # "[verify|]stripe|customer|meter|day", "counter|customer|meter|period_start", ...
    kind: FindingKind
    customer_id: str
    stripe_customer_id: str | None
    meter: str
    status: DiscrepancyStatus
    usage_day: date | None = None
    period_start: date | None = None
    ledger: Decimal | None = None
    counter: Decimal | None = None
    pushed: Decimal | None = None
    stripe: Decimal | None = None
    beyond_epsilon: bool = False
    plan: CorrectionPlan | None = None
    detail: str = ""
    over_quota_transition: bool = False
    # A closed period's finding (`needs_invoice_adjustment`): what finance needs.
    adjust_quantity: Decimal | None = None
    adjust_amount: int | None = None  # minor units, signed like the quantity
    currency: str | None = None
    stripe_invoice_id: str | None = None

    @property
    def action(self) -> str | None:
        return None if self.plan is None else self.plan.action
