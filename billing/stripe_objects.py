"""Stripe objects (as plain dicts, API 2025-03-31.basil and later) -> the rows we keep.

Pure functions, shared by the webhook handlers and the resync: both must agree on what "the
local copy of this subscription" is, or they would fight over it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

CREDITS_METADATA_KEY = "credits"  # checkout.session metadata: credits to grant, minor units
CUSTOMER_ID_METADATA_KEY = "customer_id"  # Stripe customer metadata: the application's own id


class StripeObjectError(ValueError):
    """A Stripe object we cannot map: retrying will not change it."""


def ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def _id(ref: Any) -> str | None:
    """An expandable reference: an id string, or the expanded object."""
    if isinstance(ref, dict):
        return ref.get("id")
    return ref


class MirrorRow:
    """A Stripe object as its mirror row: `COMPARED` are the fields a resync compares, in a
    stable order (also the audit's before/after)."""

    COMPARED: tuple[str, ...] = ()

    def compared(self) -> dict[str, Any]:
        return {f: _jsonable(getattr(self, f)) for f in self.COMPARED}


@dataclass(frozen=True)
class SubscriptionRow(MirrorRow):
    stripe_subscription_id: str
    stripe_customer_id: str
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    items: list[dict[str, Any]]
    stripe_created: datetime | None

    COMPARED = (
        "status", "current_period_start", "current_period_end", "cancel_at_period_end",
        "cancel_at", "canceled_at", "ended_at", "items",
    )


def subscription_row(sub: dict[str, Any]) -> SubscriptionRow:
    """Since basil the billing period lives on the items; the subscription's period is the
    span of its items' periods (they are equal unless items were added mid-period)."""
    if sub.get("object") != "subscription" or not sub.get("id"):
        raise StripeObjectError(f"not a subscription: {sub.get('object')!r}")
    customer = _id(sub.get("customer"))
    if not customer:
        raise StripeObjectError(f"subscription {sub['id']} has no customer")
    items_data = (sub.get("items") or {}).get("data") or []
    items = sorted(
        (
            {
                "id": it["id"],
                "price": _id(it.get("price")),
                "quantity": it.get("quantity"),
                "current_period_start": it.get("current_period_start"),
                "current_period_end": it.get("current_period_end"),
            }
            for it in items_data
        ),
        key=lambda it: it["id"],
    )
    starts = [it["current_period_start"] for it in items if it["current_period_start"]]
    ends = [it["current_period_end"] for it in items if it["current_period_end"]]
    return SubscriptionRow(
        stripe_subscription_id=sub["id"],
        stripe_customer_id=customer,
        status=sub["status"],
        current_period_start=ts(min(starts)) if starts else None,
        current_period_end=ts(max(ends)) if ends else None,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        cancel_at=ts(sub.get("cancel_at")),
        canceled_at=ts(sub.get("canceled_at")),
        ended_at=ts(sub.get("ended_at")),
        items=items,
        stripe_created=ts(sub.get("created")),
    )


def subscription_item_rows(sub: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of a subscription as `billing.subscription_items` rows: price, meter (metered
    prices), cycle and current period (basil: the period lives on the item)."""
    rows = []
    for it in (sub.get("items") or {}).get("data") or []:
        price = it.get("price") if isinstance(it.get("price"), dict) else {"id": it.get("price")}
        rec = price.get("recurring") or {}
        rows.append({
            "id": it["id"], "price_id": price.get("id"), "meter_id": rec.get("meter"),
            "usage_type": rec.get("usage_type"), "price": price, "interval": rec.get("interval"),
            "interval_count": rec.get("interval_count"),
            "current_period_start": ts(it.get("current_period_start")),
            "current_period_end": ts(it.get("current_period_end")),
        })
    return rows


# Our own status of an invoice Stripe deleted (only drafts can be): Stripe then has no object
# and no status; the mirror keeps the row with this status and `deleted_at`.
INVOICE_DELETED = "deleted"


@dataclass(frozen=True)
class InvoiceRow(MirrorRow):
    stripe_invoice_id: str
    stripe_customer_id: str
    stripe_subscription_id: str | None
    status: str | None  # Stripe's: draft, open, paid, uncollectible, void; ours: deleted
    currency: str | None
    amount_due: int | None
    amount_paid: int | None
    attempt_count: int | None
    period_start: datetime | None
    period_end: datetime | None
    stripe_created: datetime | None
    number: str | None = None
    total: int | None = None
    amount_remaining: int | None = None
    # status_transitions
    finalized_at: datetime | None = None
    paid_at: datetime | None = None
    voided_at: datetime | None = None
    marked_uncollectible_at: datetime | None = None
    deleted_at: datetime | None = None  # a deleted draft: when (the event's time)

    COMPARED = (
        "status", "number", "currency", "total", "amount_due", "amount_paid", "amount_remaining",
        "attempt_count", "finalized_at", "paid_at", "voided_at", "marked_uncollectible_at",
        "stripe_subscription_id", "period_start", "period_end", "deleted_at",
    )

    def deleted(self, at: datetime | None) -> InvoiceRow:
        """This draft, deleted in Stripe at `at`."""
        return replace(self, status=INVOICE_DELETED, deleted_at=at)


# Invoice fields the mirror keeps as Stripe sends them, and Stripe's `status_transitions`.
INVOICE_AS_IS = ("status", "currency", "amount_due", "amount_paid", "attempt_count", "number", "total",
                 "amount_remaining")
INVOICE_TRANSITIONS = ("finalized_at", "paid_at", "voided_at", "marked_uncollectible_at")


def invoice_subscription_id(inv: dict[str, Any]) -> str | None:
    # basil: invoice.parent.subscription_details.subscription replaces invoice.subscription.
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    return _id(details.get("subscription"))


def invoice_row(inv: dict[str, Any]) -> InvoiceRow:
    if inv.get("object") != "invoice" or not inv.get("id"):
        raise StripeObjectError(f"not an invoice: {inv.get('object')!r}")
    customer = _id(inv.get("customer"))
    if not customer:
        raise StripeObjectError(f"invoice {inv['id']} has no customer")
    transitions = inv.get("status_transitions") or {}
    return InvoiceRow(
        stripe_invoice_id=inv["id"],
        stripe_customer_id=customer,
        stripe_subscription_id=invoice_subscription_id(inv),
        period_start=ts(inv.get("period_start")),
        period_end=ts(inv.get("period_end")),
        stripe_created=ts(inv.get("created")),
        **{f: inv.get(f) for f in INVOICE_AS_IS},
        **_transitions(transitions),
    )


def _transitions(transitions: dict[str, Any]) -> dict[str, Any]:
    return {f: ts(transitions.get(f)) for f in INVOICE_TRANSITIONS}


@dataclass(frozen=True)
class CustomerRow:
    customer_id: str
    stripe_customer_id: str
    email: str | None
    name: str | None
    deleted: bool


def customer_row(cus: dict[str, Any]) -> CustomerRow:
    """Our customer id is the one the application put in the Stripe customer's metadata; a
    customer created outside the application is known by its Stripe id."""
    if not cus.get("id") or cus.get("object") != "customer":
        raise StripeObjectError(f"not a customer: {cus.get('object')!r}")
    metadata = cus.get("metadata") or {}
    return CustomerRow(
        customer_id=metadata.get(CUSTOMER_ID_METADATA_KEY) or cus["id"],
        stripe_customer_id=cus["id"],
        email=cus.get("email"),
        name=cus.get("name"),
        deleted=bool(cus.get("deleted")),
    )


@dataclass(frozen=True)
class CreditGrant:
    checkout_session_id: str
    stripe_customer_id: str
    amount: int  # minor units, > 0

    @property
    def source(self) -> str:
        """The ledger's business key: one grant per checkout session, whoever delivers it."""
        return f"checkout:{self.checkout_session_id}"


def credit_grant(session: dict[str, Any]) -> CreditGrant | None:
    """The credits a completed, paid payment-mode checkout grants; None when it grants nothing.
    A credits value that is not a positive integer is a permanent error, not a silent skip."""
    if session.get("object") != "checkout.session":
        raise StripeObjectError(f"not a checkout session: {session.get('object')!r}")
    raw = (session.get("metadata") or {}).get(CREDITS_METADATA_KEY)
    if session.get("mode") != "payment" or raw in (None, ""):
        return None
    if session.get("status") != "complete" or session.get("payment_status") != "paid":
        return None  # paid later: checkout.session.async_payment_succeeded grants it
    try:
        amount = int(str(raw).strip())
    except ValueError:
        raise StripeObjectError(
            f"checkout session {session['id']}: metadata.{CREDITS_METADATA_KEY}={raw!r} "
            "is not an integer") from None
    if amount <= 0:
        raise StripeObjectError(
            f"checkout session {session['id']}: metadata.{CREDITS_METADATA_KEY}={amount} must be > 0")
    customer = _id(session.get("customer"))
    if not customer:
        raise StripeObjectError(f"checkout session {session['id']} has no customer")
    return CreditGrant(session["id"], customer, amount)


def event_object_id(event: dict[str, Any]) -> str | None:
    obj = (event.get("data") or {}).get("object") or {}
    return obj.get("id") if isinstance(obj, dict) else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    return v
