"""Refunds: ``/v1/refunds`` (create, list, retrieve). A refund of a charge succeeds at once:
it adds a negative ``refund`` balance transaction, raises the charge's ``amount_refunded``
(``refunded`` once all of it is), and sends ``refund.created`` and ``charge.refunded``. As in
Stripe, refunding a charge leaves the invoice it paid as it is (``paid``)."""

from __future__ import annotations

from typing import Any

from ..errors import StripeError, invalid, missing
from ..params import paginate, to_int
from ..state import RequestContext, Store, new_id, snapshot
from .balance_transactions import add_balance_transaction
from .base import Params, Route, created_filter, diff_previous, merge_metadata, retrieve

REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def create_refund(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    charge_id = p.get("charge")
    if not charge_id:
        raise missing("charge")
    charge = s.col("charge").get(charge_id, param="charge", status=400)
    remaining = charge["amount"] - charge["amount_refunded"]
    if remaining <= 0:
        raise StripeError(
            400, f"Charge {charge_id} has already been refunded.", code="charge_already_refunded"
        )
    amount = to_int(p["amount"], "amount") if "amount" in p else remaining
    if amount <= 0:
        raise invalid("This value must be greater than or equal to 1.", "amount")
    if amount > remaining:
        raise invalid(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
            "amount",
            "amount_too_large",
        )
    reason = p.get("reason")
    if reason is not None and reason not in REASONS:
        raise invalid(f"Invalid reason: must be one of {', '.join(REASONS)}", "reason")
    refund_id = new_id("re_", 24)
    txn = add_balance_transaction(
        s, "refund", -amount, charge["currency"], refund_id, f"Refund of {charge_id}"
    )
    refund = s.col("refund").add(
        {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": txn["id"],
            "charge": charge_id,
            "created": s.now(),
            "currency": charge["currency"],
            "customer": charge["customer"],
            "customer_account": None,
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "metadata": merge_metadata({}, p.get("metadata")),
            "payment_intent": charge["payment_intent"],
            "payment_method": None,
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
    )
    before = snapshot(charge)
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] == charge["amount"]
    charge["refunds"]["data"].insert(0, refund)
    s.emit("refund.created", refund, ctx)
    prev = diff_previous(before, charge)
    prev.pop("refunds", None)
    s.emit("charge.refunded", charge, ctx, prev)
    return refund


def list_refunds(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    charge, pi = p.get("charge"), p.get("payment_intent")
    cf = created_filter(p)

    def pred(o: dict[str, Any]) -> bool:
        return (
            (charge is None or o["charge"] == charge)
            and (pi is None or o["payment_intent"] == pi)
            and cf(o)
        )

    return paginate(s.col("refund").newest_first(pred), p, "/v1/refunds", "refund")


ROUTES = (
    Route("POST", "/v1/refunds", create_refund),
    Route("GET", "/v1/refunds", list_refunds),
    Route("GET", "/v1/refunds/{id}", retrieve("refund")),
)
