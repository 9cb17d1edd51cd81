"""Closed billing periods (their invoice is final), as a pure function: what the ledger says
was used, what the invoice billed (plus our earlier adjustments), in; a `needs_invoice_adjustment`
finding with the quantity and the amount in minor units, and in plan mode its `InvoiceAdjustment`,
out. No IO, no clock (tests/unit/test_adjust.py). Applied by reconcile/adjustments.py.

The rule (docs/reconciliation.md "Invoice adjustments"):
- under-billed (ledger > billed): an invoice item for the next invoice, priced as the difference
  between the price of the true quantity and of the billed one (`billing.pricing`);
- over-billed, invoice open or paid: a credit note on that invoice, if the amount fits in what
  can still be credited; otherwise, or when the invoice is uncollectible, a customer balance
  credit (the next invoices use it);
- over-billed, invoice void: nothing was collected for the period; reported, no write.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.policy import FindingKind, normalize, to_stripe_value
from billing.pricing import Price, PriceError, adjustment_amount
from reconcile.plans import AdjustmentKind, Finding, InvoiceAdjustment
from reconcile.types import DiscrepancyStatus, WriteMode

TOLERANCE = Decimal("0.000001")


@dataclass(frozen=True)
class ClosedPeriod:
    """One metered item's period on a final invoice, as read in one snapshot."""

    customer_id: str
    stripe_customer_id: str
    meter: str  # event name
    stripe_invoice_id: str
    invoice_status: str  # open, paid, uncollectible, void
    currency: str
    period_start: datetime
    period_end: datetime
    billed: Decimal  # the invoice line's quantity for the item
    adjusted: Decimal  # signed sum of our earlier adjustments of this invoice and meter
    ledger: Decimal  # the ledger over [period_start, period_end), exact timestamps
    price: Price | None
    price_error: str = ""  # why the price cannot be used (then: reported, not priced)
    creditable: int = 0  # what a credit note may still take on the invoice (minor units)


def adjustment_identifier(c: ClosedPeriod, kind: AdjustmentKind) -> str:
    """Deterministic from the business key and the state it corrects: the same closed period in
    the same state always plans the same adjustment (a retried or re-approved plan never
    applies it twice); once applied, `adjusted` moves and the key is in agreement."""
    raw = "|".join([c.customer_id, c.meter, c.stripe_invoice_id, kind, to_stripe_value(c.ledger),
                    to_stripe_value(c.billed + c.adjusted)])
    return "bradj_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def choose_kind(quantity: Decimal, amount: int, invoice_status: str, creditable: int) -> AdjustmentKind | None:
    """The documented rule (module docstring); None: no write (a void invoice's over-billing)."""
    if quantity > 0:
        return AdjustmentKind.INVOICE_ITEM
    if invoice_status in ("open", "paid") and amount <= creditable:
        return AdjustmentKind.CREDIT_NOTE
    if invoice_status == "void":
        return None
    return AdjustmentKind.BALANCE_CREDIT


def describe(c: ClosedPeriod, quantity: Decimal, run_id: str) -> str:
    what = "unbilled" if quantity > 0 else "over-billed"
    return (f"Usage adjustment: {to_stripe_value(abs(quantity))} {c.meter} {what} in "
            f"{c.period_start:%Y-%m-%d %H:%M} - {c.period_end:%Y-%m-%d %H:%M} UTC "
            f"(invoice {c.stripe_invoice_id}, run {run_id})")[:500]


def _finding(c: ClosedPeriod, prefix: str, status: DiscrepancyStatus, detail: str,
             amount: int | None = None, plan: InvoiceAdjustment | None = None) -> Finding:
    effective = c.billed + c.adjusted
    return Finding(
        key=f"{prefix}adjust|{c.customer_id}|{c.meter}|{c.stripe_invoice_id}",
        kind=FindingKind.NEEDS_INVOICE_ADJUSTMENT, customer_id=c.customer_id,
        stripe_customer_id=c.stripe_customer_id, meter=c.meter, period_start=c.period_start.date(),
        ledger=c.ledger, stripe=effective, adjust_quantity=normalize(c.ledger - effective), adjust_amount=amount,
        currency=c.currency, stripe_invoice_id=c.stripe_invoice_id, status=status, detail=detail[:500],
        plan=plan)


def plan_closed_period(c: ClosedPeriod, mode: WriteMode, run_id: str, prefix: str = "") -> Finding | None:
    """The finding of one closed period, or None when it was billed right."""
    effective = c.billed + c.adjusted
    quantity = c.ledger - effective
    if abs(quantity) <= TOLERANCE:
        return None
    try:
        if c.price is None:
            raise PriceError(c.price_error or "the item's price is unknown")
        signed = adjustment_amount(c.price, effective, c.ledger)
    except PriceError as e:
        return _finding(c, prefix, DiscrepancyStatus.UNFIXABLE, f"cannot price this period: {e}")
    kind = choose_kind(quantity, abs(signed), c.invoice_status, c.creditable)
    if signed == 0 or kind is None:
        why = ("worth 0 at this price" if signed == 0
               else "the invoice is void: nothing was collected for this period")
        return _finding(c, prefix, DiscrepancyStatus.UNFIXABLE, f"no adjustment: {why}", signed)
    if mode != WriteMode.PLAN:
        status = DiscrepancyStatus.OBSERVED if mode == WriteMode.OBSERVE else DiscrepancyStatus.UNFIXABLE
        return _finding(c, prefix, status, f"{kind} of {abs(signed)} {c.currency} needed; invoice "
                        "adjustments are only made by a plan (--plan) and its approval", signed)
    plan = InvoiceAdjustment(
        adjustment=kind, identifier=adjustment_identifier(c, kind),
        stripe_invoice_id=c.stripe_invoice_id, period_start=c.period_start, period_end=c.period_end,
        quantity=normalize(quantity), amount=abs(signed), currency=c.currency, price_id=c.price.id,
        billed=effective, ledger=c.ledger, description=describe(c, quantity, run_id))
    return _finding(c, prefix, DiscrepancyStatus.PROPOSED,
                    f"{kind} of {abs(signed)} {c.currency} for {to_stripe_value(quantity)} units", signed, plan)
