"""Customers: ``/v1/customers``. Deleting one cancels its live subscriptions."""

from __future__ import annotations

import secrets
from typing import Any

from ..errors import StripeError, no_such
from ..params import paginate
from ..state import RequestContext, Store, new_id, snapshot
from .base import Params, Route, created_filter, diff_previous, retrieve, set_fields
from .subscriptions import mark_canceled


def _address_null() -> dict[str, Any]:
    return {
        "city": None,
        "country": None,
        "line1": None,
        "line2": None,
        "postal_code": None,
        "state": None,
    }


def bare_customer(cid: str, now: int, **fields: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "id": cid,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": now,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": None,
        "invoice_prefix": secrets.token_hex(4).upper()[:8],
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }
    c.update(fields)
    return c


CUSTOMER_FIELDS = ("email", "name", "description", "phone")


def create_customer(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    c = bare_customer(new_id("cus_", 14), s.now())
    set_fields(c, p, CUSTOMER_FIELDS)
    if isinstance(p.get("address"), dict):
        c["address"] = {**_address_null(), **p["address"]}
    if p.get("preferred_locales"):
        c["preferred_locales"] = list(p["preferred_locales"])
    s.col("customer").add(c)
    s.emit("customer.created", c, ctx)
    return c


def update_customer(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    c = s.col("customer").get(id)
    if c.get("deleted"):
        raise StripeError(400, f"No such customer: '{id}'", code="resource_missing", param="id")
    before = snapshot(c)
    if "address" in p:
        c["address"] = (
            {**_address_null(), **p["address"]} if isinstance(p["address"], dict) else None
        )
    set_fields(c, p, CUSTOMER_FIELDS)
    prev = diff_previous(before, c)
    if prev:
        s.emit("customer.updated", c, ctx, prev)
    return c


def delete_customer(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    c = s.col("customer").get(id)
    if c.get("deleted"):
        raise no_such("customer", id)
    for sub in s.col("subscription").objects.values():
        if sub["customer"] == id and sub["status"] not in ("canceled", "incomplete_expired"):
            mark_canceled(s, ctx, sub)
    snap = snapshot(c)
    c.clear()
    c.update({"id": id, "object": "customer", "deleted": True, "created": snap["created"]})
    s.emit("customer.deleted", snap, ctx)
    return {"id": id, "object": "customer", "deleted": True}


def list_customers(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    email = p.get("email")
    cf = created_filter(p)
    items = s.col("customer").newest_first(
        lambda c: not c.get("deleted") and (email is None or c.get("email") == email) and cf(c)
    )
    return paginate(items, p, "/v1/customers", "customer")


ROUTES = (
    Route("POST", "/v1/customers", create_customer),
    Route("GET", "/v1/customers", list_customers),
    Route("GET", "/v1/customers/{id}", retrieve("customer")),
    Route("POST", "/v1/customers/{id}", update_customer),
    Route("DELETE", "/v1/customers/{id}", delete_customer),
)
