"""Customer balance transactions: ``/v1/customers/{id}/balance_transactions`` (create, list,
retrieve). Each one moves ``customer.balance`` by its ``amount`` (minor units; negative = a
credit the customer's next invoices use, positive = a debit) and records ``ending_balance``.
A credit note credited to the balance adds one of ``type: credit_note``."""

from __future__ import annotations

from typing import Any

from ..errors import StripeError, invalid, missing
from ..params import paginate, to_int
from ..state import RequestContext, Store, new_id, snapshot
from .base import Params, Route, merge_metadata


def add_customer_balance_transaction(
    s: Store, ctx: RequestContext | None, customer: dict[str, Any], amount: int, currency: str,
    type_: str = "adjustment", description: str | None = None, metadata: Any = None,
    credit_note: str | None = None, invoice: str | None = None,
) -> dict[str, Any]:
    before = snapshot(customer)
    customer["balance"] = customer.get("balance", 0) + amount
    if customer.get("currency") is None:
        customer["currency"] = currency
    txn = s.col("customer_balance_transaction").add(
        {
            "id": new_id("cbtxn_", 24),
            "object": "customer_balance_transaction",
            "amount": amount,
            "checkout_session": None,
            "created": s.now(),
            "credit_note": credit_note,
            "currency": currency,
            "customer": customer["id"],
            "customer_account": None,
            "description": description,
            "ending_balance": customer["balance"],
            "invoice": invoice,
            "livemode": False,
            "metadata": merge_metadata({}, metadata),
            "type": type_,
        }
    )
    s.emit("customer.updated", customer, ctx, {"balance": before.get("balance", 0)})
    return txn


def create_balance_transaction(
    s: Store, ctx: RequestContext | None, p: Params, id: str
) -> dict[str, Any]:
    customer = s.col("customer").get(id)
    if "amount" not in p:
        raise missing("amount")
    if not p.get("currency"):
        raise missing("currency")
    amount = to_int(p["amount"], "amount")
    if amount == 0:
        raise invalid("The amount must be a non-zero integer.", "amount")
    currency = p["currency"].lower()
    if customer.get("currency") not in (None, currency):
        raise StripeError(
            400,
            f"The currency of this balance transaction ({currency}) does not match the "
            f"customer's currency ({customer['currency']}).",
            param="currency",
        )
    return add_customer_balance_transaction(
        s, ctx, customer, amount, currency, description=p.get("description"),
        metadata=p.get("metadata"),
    )


def list_balance_transactions(
    s: Store, ctx: RequestContext | None, p: Params, id: str
) -> dict[str, Any]:
    s.col("customer").get(id)
    items = s.col("customer_balance_transaction").newest_first(lambda o: o["customer"] == id)
    return paginate(items, p, f"/v1/customers/{id}/balance_transactions", "customer_balance_transaction")


def retrieve_balance_transaction(
    s: Store, ctx: RequestContext | None, p: Params, id: str, txn: str
) -> dict[str, Any]:
    s.col("customer").get(id)
    obj = s.col("customer_balance_transaction").get(txn)
    if obj["customer"] != id:
        s.col("customer_balance_transaction").get("")  # 404, as for any unknown id
    return obj


ROUTES = (
    Route("POST", "/v1/customers/{id}/balance_transactions", create_balance_transaction),
    Route("GET", "/v1/customers/{id}/balance_transactions", list_balance_transactions),
    Route("GET", "/v1/customers/{id}/balance_transactions/{txn}", retrieve_balance_transaction),
)
