"""Charges: ``/v1/charges`` (list, retrieve). The emulator creates a charge when an invoice is
paid through Stripe (not ``paid_out_of_band``): it succeeds at once, is captured, and adds its
``charge`` balance transaction. Refunds (``refunds.py``) update ``amount_refunded`` and
``refunded``."""

from __future__ import annotations

from typing import Any

from ..params import paginate
from ..state import RequestContext, Store, new_id
from .balance_transactions import add_balance_transaction
from .base import Params, Route, created_filter, retrieve


def create_charge(s: Store, customer: str, amount: int, currency: str, description: str) -> dict[str, Any]:
    charge_id = new_id("ch_", 24)
    txn = add_balance_transaction(s, "charge", amount, currency, charge_id, description)
    return s.col("charge").add(
        {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": txn["id"],
            "billing_details": {
                "address": None,
                "email": None,
                "name": None,
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": None,
            "captured": True,
            "created": s.now(),
            "currency": currency,
            "customer": customer,
            "description": description,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            "metadata": {},
            "on_behalf_of": None,
            "outcome": {"network_status": "approved_by_network", "reason": None, "type": "authorized"},
            "paid": True,
            "payment_intent": None,
            "payment_method": None,
            "payment_method_details": None,
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": None,
            "refunded": False,
            "refunds": {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/charges/{charge_id}/refunds",
            },
            "review": None,
            "shipping": None,
            "source": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded",
            "transfer_data": None,
            "transfer_group": None,
        }
    )


def list_charges(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    customer = p.get("customer")
    cf = created_filter(p)

    def pred(o: dict[str, Any]) -> bool:
        return (customer is None or o["customer"] == customer) and cf(o)

    return paginate(s.col("charge").newest_first(pred), p, "/v1/charges", "charge")


ROUTES = (
    Route("GET", "/v1/charges", list_charges),
    Route("GET", "/v1/charges/{id}", retrieve("charge")),
)
