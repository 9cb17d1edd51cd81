"""Invoice items: ``POST /v1/invoiceitems`` (and retrieve). An item given an ``invoice`` (a
draft of the same customer) becomes one of its lines at once and raises its totals; an item
without one waits for the customer's next invoice: the next renewal draft of a subscription
picks up the customer's pending items (``attach_pending_items``), as in Stripe. Amount in minor units, integer."""

from __future__ import annotations

from typing import Any

from ..errors import StripeError, invalid, missing
from ..params import paginate, to_bool, to_int
from ..state import RequestContext, Store, new_id
from .base import Params, Route, merge_metadata, retrieve


def create_invoiceitem(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    customer = p.get("customer")
    if not customer:
        raise missing("customer")
    s.col("customer").get(customer, param="customer", status=400)
    if "amount" not in p:
        raise missing("amount")
    amount = to_int(p["amount"], "amount")
    inv = None
    if p.get("invoice"):
        inv = s.col("invoice").get(p["invoice"], param="invoice", status=400)
        if inv["customer"] != customer:
            raise invalid("The invoice belongs to another customer.", "invoice")
        if inv["status"] != "draft":
            raise StripeError(
                400,
                f"You can only add invoice items to draft invoices; this invoice is {inv['status']}.",
                param="invoice",
                code="invoice_not_editable",
            )
    currency = (p.get("currency") or (inv["currency"] if inv else "usd")).lower()
    if inv is not None and currency != inv["currency"]:
        raise invalid("The currency of the invoice item must match the invoice's.", "currency")
    now = s.now()
    item = s.col("invoiceitem").add(
        {
            "id": new_id("ii_", 24),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer,
            "customer_account": None,
            "date": now,
            "description": p.get("description"),
            "discountable": True,
            "discounts": [],
            "invoice": inv["id"] if inv else None,
            "livemode": False,
            "metadata": merge_metadata({}, p.get("metadata")),
            "net_amount": amount,
            "parent": None,
            "period": {"end": now, "start": now},
            "pricing": {"type": "price_details", "unit_amount_decimal": str(amount)},
            "proration": False,
            "quantity": 1,
            "quantity_decimal": "1",
            "tax_rates": [],
            "test_clock": None,
        }
    )
    if inv is not None:
        _add_line(inv, item)
    return item


def attach_pending_items(s: Store, inv: dict[str, Any]) -> None:
    """Move the customer's pending items (no invoice yet, same currency) onto draft ``inv``."""
    for item in s.col("invoiceitem").objects.values():
        if item["invoice"] is None and item["customer"] == inv["customer"] and item["currency"] == inv["currency"]:
            item["invoice"] = inv["id"]
            _add_line(inv, item)


def _add_line(inv: dict[str, Any], item: dict[str, Any]) -> None:
    amount = item["amount"]
    inv["lines"]["data"].append(
        {
            "id": new_id("il_", 24),
            "object": "line_item",
            "amount": amount,
            "currency": item["currency"],
            "description": item["description"],
            "discount_amounts": [],
            "discountable": True,
            "discounts": [],
            "invoice": inv["id"],
            "livemode": False,
            "metadata": {},
            "parent": {
                "invoice_item_details": {
                    "invoice_item": item["id"],
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": None,
                },
                "subscription_item_details": None,
                "type": "invoice_item_details",
            },
            "period": item["period"],
            "pretax_credit_amounts": [],
            "pricing": item["pricing"],
            "quantity": 1,
            "quantity_decimal": "1",
            "subscription": None,
            "subtotal": amount,
            "taxes": [],
        }
    )
    inv["lines"]["total_count"] = len(inv["lines"]["data"])
    for k in ("amount_due", "amount_remaining", "subtotal", "subtotal_excluding_tax", "total",
              "total_excluding_tax"):
        inv[k] += amount


def list_invoiceitems(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    """Filters ``customer``, ``invoice`` and ``pending`` (true: not on an invoice yet)."""
    customer, invoice = p.get("customer"), p.get("invoice")
    pending = to_bool(p["pending"], "pending") if "pending" in p else None
    items = s.col("invoiceitem").newest_first(
        lambda o: (customer is None or o["customer"] == customer)
        and (invoice is None or o["invoice"] == invoice)
        and (pending is None or (o["invoice"] is None) == pending))
    return paginate(items, p, "/v1/invoiceitems", "invoiceitem")


ROUTES = (
    Route("GET", "/v1/invoiceitems", list_invoiceitems),
    Route("POST", "/v1/invoiceitems", create_invoiceitem),
    Route("GET", "/v1/invoiceitems/{id}", retrieve("invoiceitem")),
)
