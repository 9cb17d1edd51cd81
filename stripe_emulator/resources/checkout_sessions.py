"""Checkout sessions: ``/v1/checkout/sessions``, and the ``complete_checkout_session`` test
helper (the customer paid: customer, subscription and invoice appear as in Stripe)."""

from __future__ import annotations

from typing import Any

from ..config import DAY
from ..errors import StripeError, invalid, missing
from ..params import paginate, to_int
from ..state import RequestContext, Store, new_id
from .base import Params, Route, as_list, created_filter, merge_metadata, public, retrieve
from .customers import create_customer
from .subscriptions import create_subscription


def create_checkout_session(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    mode = p.get("mode")
    if mode not in ("payment", "setup", "subscription"):
        raise missing("mode") if not mode else invalid(f"Invalid mode: {mode}", "mode")
    line_items = as_list(p.get("line_items") or [])
    if mode in ("payment", "subscription") and not line_items:
        raise missing("line_items")
    amount = 0
    currency = None
    for i, li in enumerate(line_items):
        if not li.get("price"):
            raise missing(f"line_items[{i}][price]")
        price = s.col("price").get(li["price"], param=f"line_items[{i}][price]", status=400)
        if mode == "subscription" and price["recurring"] is None:
            pass
        currency = currency or price["currency"]
        if price["recurring"] is None or price["recurring"]["usage_type"] != "metered":
            amount += (price["unit_amount"] or 0) * to_int(
                li.get("quantity", 1), f"line_items[{i}][quantity]"
            )
    customer = p.get("customer")
    if customer:
        s.col("customer").get(customer, param="customer", status=400)
    now = s.now()
    sid = new_id("cs_test_", 58)
    sess = {
        "id": sid,
        "object": "checkout.session",
        "adaptive_pricing": {"enabled": False},
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": amount if mode != "setup" else None,
        "amount_total": amount if mode != "setup" else None,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": p.get("cancel_url"),
        "client_reference_id": p.get("client_reference_id"),
        "client_secret": None,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": now,
        "currency": currency,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": customer,
        "customer_account": None,
        "customer_creation": None
        if customer
        else ("always" if mode != "payment" else "if_required"),
        "customer_details": None,
        "customer_email": p.get("customer_email"),
        "discounts": [],
        "expires_at": to_int(p["expires_at"], "expires_at") if p.get("expires_at") else now + DAY,
        "integration_identifier": None,
        "invoice": None,
        "invoice_creation": None,
        "livemode": False,
        "locale": p.get("locale"),
        "managed_payments": {"enabled": False},
        "metadata": merge_metadata({}, p.get("metadata")),
        "mode": mode,
        "origin_context": None,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": "always" if mode == "subscription" else None,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
        "permissions": None,
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": None,
        "subscription": None,
        "success_url": p.get("success_url"),
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": p.get("ui_mode", "hosted"),
        "url": f"https://checkout.stripe.com/c/pay/{sid}",
        "wallet_options": None,
        "_line_items": line_items,
        "_subscription_data": p.get("subscription_data") or {},
    }
    s.col("checkout.session").add(sess)
    return sess


def list_checkout_sessions(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    customer, status, sub = p.get("customer"), p.get("status"), p.get("subscription")
    cf = created_filter(p)
    items = s.col("checkout.session").newest_first(
        lambda o: (
            (customer is None or o["customer"] == customer)
            and (status is None or o["status"] == status)
            and (sub is None or o["subscription"] == sub)
            and cf(o)
        )
    )
    return paginate(items, p, "/v1/checkout/sessions", "checkout.session")


def expire_checkout_session(
    s: Store, ctx: RequestContext | None, p: Params, id: str
) -> dict[str, Any]:
    sess = s.col("checkout.session").get(id)
    if sess["status"] != "open":
        raise StripeError(
            400,
            f'Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status of "{sess["status"]}".',
        )
    sess["status"] = "expired"
    sess["url"] = None
    s.emit("checkout.session.expired", public(sess), ctx, {"status": "open"})
    return sess


def complete_checkout_session(s: Store, ctx: RequestContext | None, id: str) -> dict[str, Any]:
    """Test helper: the customer paid. Creates customer/subscription/invoice as Stripe would."""
    sess = s.col("checkout.session").get(id)
    if sess["status"] != "open":
        raise StripeError(400, f"Checkout Session {id} is {sess['status']}, not open.")
    customer = sess["customer"]
    if not customer:
        email = sess["customer_email"] or f"{id[-10:].lower()}@example.com"
        customer = create_customer(s, ctx, {"email": email})["id"]
    cust = s.col("customer").objects[customer]
    if sess["mode"] == "subscription":
        items = [
            {k: v for k, v in li.items() if k in ("price", "quantity")}
            for li in sess["_line_items"]
        ]
        for it in items:
            price = s.col("price").objects[it["price"]]
            if (price["recurring"] or {}).get("usage_type") == "metered":
                it.pop("quantity", None)
        sd = sess["_subscription_data"]
        sub = create_subscription(
            s,
            ctx,
            {
                "customer": customer,
                "items": items,
                "metadata": sd.get("metadata"),
                "trial_period_days": sd.get("trial_period_days"),
            },
        )
        sess["subscription"] = sub["id"]
        sess["invoice"] = sub["latest_invoice"]
    elif sess["mode"] == "payment":
        sess["payment_intent"] = new_id("pi_", 24)
    else:
        sess["setup_intent"] = new_id("seti_", 24)
    sess["customer"] = customer
    sess["customer_details"] = {
        "address": cust.get("address"),
        "business_name": None,
        "email": cust.get("email"),
        "individual_name": None,
        "name": cust.get("name"),
        "phone": cust.get("phone"),
        "tax_exempt": "none",
        "tax_ids": [],
    }
    sess["status"] = "complete"
    sess["payment_status"] = "no_payment_required" if sess["mode"] == "setup" else "paid"
    sess["url"] = None
    s.emit("checkout.session.completed", public(sess), ctx)
    return sess


ROUTES = (
    Route("POST", "/v1/checkout/sessions", create_checkout_session),
    Route("GET", "/v1/checkout/sessions", list_checkout_sessions),
    Route("GET", "/v1/checkout/sessions/{id}", retrieve("checkout.session")),
    Route("POST", "/v1/checkout/sessions/{id}/expire", expire_checkout_session),
)
