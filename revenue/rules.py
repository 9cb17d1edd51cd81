"""The revenue rule and the per-invoice findings, as pure functions (unit-tested in
tests/unit/test_revenue_rules.py). docs/revenue.md states them for people.

An invoice's revenue on a UTC day D, on either side (the mirror `billing.invoices` +
`billing.invoice_refunds`, or Stripe):

    paid(D)     = amount_paid when the invoice is `paid` with status_transitions.paid_at in D, else 0
    refunded(D) = the succeeded refunds of its charges created in D
    net(D)      = paid(D) - refunded(D)

A refund is booked on the day it happened (when the money left), not on the day the invoice
was paid: a day's figure never changes because of a later refund."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from revenue.types import FindingKind

PAID = "paid"


@dataclass(frozen=True)
class Side:
    """One side's view of an invoice (the mirror's or Stripe's). `refunds`: refund id -> amount,
    the succeeded refunds created in the run's range."""

    status: str | None
    amount_paid: int
    paid_at: datetime | None
    currency: str | None
    refunds: dict[str, int] = field(default_factory=dict)

    @property
    def refunded(self) -> int:
        return sum(self.refunds.values())


@dataclass(frozen=True)
class StripeSide(Side):
    amount_due: int = 0
    payments_paid: int = 0  # Stripe's paid invoice payments of the invoice (count) ...
    payments_amount: int = 0  # ... and their amount_paid, summed

    @property
    def out_of_band(self) -> int:
        """What was paid without an invoice payment through Stripe (`paid_out_of_band`)."""
        return max(self.amount_paid - self.payments_amount, 0) if self.status == PAID else 0


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    detail: str
    fixable: bool  # a resync of the mirror (and its refunds) fixes it


def classify(local: Side | None, stripe: StripeSide | None) -> list[Finding]:
    """The findings of one invoice (none: both sides agree). `stripe` None: Stripe has no such
    invoice; `local` None: the mirror has no row."""
    if stripe is None:
        if local is None:
            return []
        return [Finding(FindingKind.MISSING_IN_STRIPE,
                        f"the mirror has it ({local.status}, paid {local.amount_paid}); Stripe does not", False)]
    found: list[Finding] = []
    if stripe.payments_amount > stripe.amount_due:
        found.append(Finding(
            FindingKind.PAID_TWICE,
            f"{stripe.payments_paid} paid payments for {stripe.payments_amount}, "
            f"the invoice asked for {stripe.amount_due}: refund the excess in Stripe", False))
    if local is None:
        found.append(Finding(FindingKind.MISSING_LOCALLY,
                             f"Stripe: {stripe.status}, paid {stripe.amount_paid}; not in the mirror", True))
        return found
    if local.status != stripe.status or local.paid_at != stripe.paid_at:
        found.append(Finding(
            FindingKind.STATUS_DIFFERS,
            f"mirror {local.status} (paid_at {_iso(local.paid_at)}), Stripe {stripe.status} "
            f"(paid_at {_iso(stripe.paid_at)})", True))
    extra_local = set(local.refunds) - set(stripe.refunds)
    if local.amount_paid != stripe.amount_paid or local.refunded != stripe.refunded:
        found.append(Finding(
            FindingKind.AMOUNT_DIFFERS,
            f"mirror paid {local.amount_paid} refunded {local.refunded}, "
            f"Stripe paid {stripe.amount_paid} refunded {stripe.refunded}",
            # Refunds the mirror has and Stripe does not are not ours to delete.
            not extra_local))
    return found


def paid_on(side: Side | None, day_start: datetime, day_end: datetime) -> int:
    """paid(D) of the rule."""
    if side is None or side.status != PAID or side.paid_at is None:
        return 0
    return side.amount_paid if day_start <= side.paid_at < day_end else 0


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None
