"""Invoice payments: ``/v1/invoice_payments`` (list with ``invoice``, ``status``, ``created``
and ``payment[type]`` filters; retrieve). As in Stripe, finalizing an invoice creates its
default payment (``is_default``, ``open``, ``amount_requested`` = ``amount_due``); paying the
invoice through Stripe makes it ``paid`` (``amount_paid``, ``status_transitions.paid_at``) with
the charge as its payment (``payment.type: charge``: the emulator has no PaymentIntents); voiding
the invoice cancels it. Paying out of band moves no money through Stripe: no charge, and the
default payment is canceled (a choice, see docs/emulator.md)."""

from __future__ import annotations

from typing import Any

from ..errors import invalid
from ..params import paginate
from ..state import RequestContext, Store
from .base import Params, Route, created_filter, retrieve

STATUSES = ("canceled", "open", "paid")


def open_default_payment(s: Store, inv: dict[str, Any]) -> None:
    """The default payment of an invoice just finalized."""
    s.col("invoice_payment").add(
        {
            "id": _default_payment_id(inv),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": inv["amount_due"],
            "created": s.now(),
            "currency": inv["currency"],
            "invoice": inv["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"type": "charge", "charge": None},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
    )


def _default_payment_id(inv: dict[str, Any]) -> str:
    # Derived from the invoice's id: found again without an index (and after a state reload).
    return "inpay_" + inv["id"].removeprefix("in_")


def _default_payment(s: Store, inv: dict[str, Any]) -> dict[str, Any] | None:
    return s.col("invoice_payment").objects.get(_default_payment_id(inv))


def settle_default_payment(s: Store, inv: dict[str, Any], charge_id: str | None) -> None:
    """The invoice was paid: through Stripe by ``charge_id``, or out of band (None)."""
    payment = _default_payment(s, inv)
    if payment is None or payment["status"] != "open":
        return
    if charge_id is None:
        cancel_default_payment(s, inv)
        return
    payment["status"] = "paid"
    payment["amount_paid"] = inv["amount_paid"]
    payment["payment"]["charge"] = charge_id
    payment["status_transitions"]["paid_at"] = s.now()


def cancel_default_payment(s: Store, inv: dict[str, Any]) -> None:
    payment = _default_payment(s, inv)
    if payment is not None and payment["status"] == "open":
        payment["status"] = "canceled"
        payment["status_transitions"]["canceled_at"] = s.now()


def list_invoice_payments(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    invoice, status = p.get("invoice"), p.get("status")
    if status is not None and status not in STATUSES:
        raise invalid(f"Invalid status: must be one of {', '.join(STATUSES)}", "status")
    ptype = (p.get("payment") or {}).get("type") if isinstance(p.get("payment"), dict) else None
    cf = created_filter(p)

    def pred(o: dict[str, Any]) -> bool:
        return (
            (invoice is None or o["invoice"] == invoice)
            and (status is None or o["status"] == status)
            and (ptype is None or o["payment"]["type"] == ptype)
            and cf(o)
        )

    return paginate(
        s.col("invoice_payment").newest_first(pred), p, "/v1/invoice_payments", "invoice_payment"
    )


ROUTES = (
    Route("GET", "/v1/invoice_payments", list_invoice_payments),
    Route("GET", "/v1/invoice_payments/{id}", retrieve("invoice_payment")),
)
