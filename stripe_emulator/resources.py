"""Customers, products, prices, subscriptions, invoices, checkout sessions, webhook
endpoints and events (v1 wire shapes as in Stripe's fixtures)."""

from __future__ import annotations

import calendar
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import StripeError, invalid, missing, no_such
from .state import (
    API_VERSION,
    DAY,
    RequestContext,
    diff_previous,
    matches_created,
    new_id,
    paginate,
    snapshot,
    to_bool,
    to_int,
)

if TYPE_CHECKING:
    from .state import Store

Params = dict[str, Any]


# ---------------------------------------------------------------------------- helpers
def _metadata(current: dict[str, Any] | None, given: Any) -> dict[str, Any]:
    """Stripe merges metadata keys; an empty string value (or ``metadata=""``) unsets."""
    out = dict(current or {})
    if given is None:
        return out
    if given == "":
        return {}
    if not isinstance(given, dict):
        raise invalid("Invalid metadata: must be a hash", "metadata", "parameter_invalid_hash")
    for k, v in given.items():
        if v == "":
            out.pop(k, None)
        else:
            out[k] = str(v)
    return out


def add_interval(ts: int, interval: str, count: int = 1, anchor_day: int | None = None) -> int:
    dt = datetime.fromtimestamp(ts, UTC)
    if interval == "day":
        return ts + DAY * count
    if interval == "week":
        return ts + 7 * DAY * count
    months = count * (12 if interval == "year" else 1)
    m0 = dt.month - 1 + months
    year, month = dt.year + m0 // 12, m0 % 12 + 1
    day = min(anchor_day or dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=day).timestamp())


def _list_filter_created(p: Params):
    created = p.get("created")
    return lambda o: matches_created(created, o["created"])


def _address_null() -> dict[str, Any]:
    return {
        "city": None,
        "country": None,
        "line1": None,
        "line2": None,
        "postal_code": None,
        "state": None,
    }


# ---------------------------------------------------------------------------- customers
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


_CUSTOMER_FIELDS = ("email", "name", "description", "phone")


def create_customer(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    c = bare_customer(new_id("cus_", 14), s.now())
    for k in _CUSTOMER_FIELDS:
        if k in p:
            c[k] = p[k] or None
    if isinstance(p.get("address"), dict):
        c["address"] = {**_address_null(), **p["address"]}
    if p.get("preferred_locales"):
        c["preferred_locales"] = list(p["preferred_locales"])
    c["metadata"] = _metadata({}, p.get("metadata"))
    s.col("customer").add(c)
    s.emit("customer.created", c, ctx)
    return c


def get_customer(s: Store, id: str) -> dict[str, Any]:
    return s.col("customer").get(id)


def retrieve_customer(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    return get_customer(s, id)


def update_customer(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    c = get_customer(s, id)
    if c.get("deleted"):
        raise StripeError(400, f"No such customer: '{id}'", code="resource_missing", param="id")
    before = snapshot(c)
    for k in _CUSTOMER_FIELDS:
        if k in p:
            c[k] = p[k] or None
    if "address" in p:
        c["address"] = (
            {**_address_null(), **p["address"]} if isinstance(p["address"], dict) else None
        )
    if "metadata" in p:
        c["metadata"] = _metadata(c["metadata"], p["metadata"])
    prev = diff_previous(before, c)
    if prev:
        s.emit("customer.updated", c, ctx, prev)
    return c


def delete_customer(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    c = get_customer(s, id)
    if c.get("deleted"):
        raise no_such("customer", id)
    for sub in s.col("subscription").objects.values():
        if sub["customer"] == id and sub["status"] not in ("canceled", "incomplete_expired"):
            _cancel_subscription(s, ctx, sub)
    snap = snapshot(c)
    c.clear()
    c.update({"id": id, "object": "customer", "deleted": True, "created": snap["created"]})
    s.emit("customer.deleted", snap, ctx)
    return {"id": id, "object": "customer", "deleted": True}


def list_customers(s: Store, ctx, p: Params) -> dict[str, Any]:
    email = p.get("email")
    cf = _list_filter_created(p)
    items = s.col("customer").newest_first(
        lambda c: not c.get("deleted") and (email is None or c.get("email") == email) and cf(c)
    )
    return paginate(items, p, "/v1/customers", "customer")


# ---------------------------------------------------------------------------- products
def create_product(s: Store, ctx, p: Params) -> dict[str, Any]:
    if not p.get("name"):
        raise missing("name")
    now = s.now()
    prod = {
        "id": p.get("id") or new_id("prod_", 14),
        "object": "product",
        "active": to_bool(p.get("active", True), "active"),
        "created": now,
        "default_price": None,
        "description": p.get("description") or None,
        "images": list(p.get("images") or []),
        "livemode": False,
        "marketing_features": [],
        "metadata": _metadata({}, p.get("metadata")),
        "name": p["name"],
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": p.get("statement_descriptor"),
        "tax_code": p.get("tax_code"),
        "type": "service",
        "unit_label": p.get("unit_label"),
        "updated": now,
        "url": p.get("url"),
    }
    if prod["id"] in s.col("product").objects:
        raise invalid(
            f"Product already exists: {prod['id']}", "id", "resource_already_exists", saved=True
        )
    s.col("product").add(prod)
    s.emit("product.created", prod, ctx)
    return prod


def update_product(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    prod = s.col("product").get(id)
    before = snapshot(prod)
    for k in ("name", "description", "unit_label", "statement_descriptor", "url", "default_price"):
        if k in p:
            prod[k] = p[k] or None
    if "active" in p:
        prod["active"] = to_bool(p["active"], "active")
    if "metadata" in p:
        prod["metadata"] = _metadata(prod["metadata"], p["metadata"])
    prev = diff_previous(before, prod)
    if prev:
        prod["updated"] = s.now()
        s.emit("product.updated", prod, ctx, prev)
    return prod


def list_products(s: Store, ctx, p: Params) -> dict[str, Any]:
    active = to_bool(p["active"], "active") if "active" in p else None
    cf = _list_filter_created(p)
    items = s.col("product").newest_first(
        lambda o: (active is None or o["active"] == active) and cf(o)
    )
    return paginate(items, p, "/v1/products", "product")


# ---------------------------------------------------------------------------- prices
def create_price(s: Store, ctx, p: Params) -> dict[str, Any]:
    if not p.get("currency"):
        raise missing("currency")
    product_id = p.get("product")
    if product_id:
        s.col("product").get(product_id, param="product", status=400)
    elif isinstance(p.get("product_data"), dict):
        product_id = create_product(s, ctx, p["product_data"])["id"]
    else:
        raise missing("product")
    unit_amount = p.get("unit_amount")
    unit_amount_decimal = p.get("unit_amount_decimal")
    if unit_amount is not None:
        unit_amount = to_int(unit_amount, "unit_amount")
        unit_amount_decimal = str(unit_amount)
    elif unit_amount_decimal is not None:
        unit_amount = None
    elif p.get("custom_unit_amount") is None and p.get("billing_scheme") != "tiered":
        raise missing("unit_amount")
    recurring = None
    if isinstance(p.get("recurring"), dict):
        r = p["recurring"]
        if r.get("interval") not in ("day", "week", "month", "year"):
            raise invalid(
                "Invalid recurring[interval]", "recurring[interval]", "parameter_invalid_string"
            )
        usage_type = r.get("usage_type", "licensed")
        if usage_type not in ("licensed", "metered"):
            raise invalid("Invalid recurring[usage_type]", "recurring[usage_type]")
        meter = r.get("meter") or None
        if usage_type == "metered" and not meter:
            raise invalid(
                "Metered prices must be backed by a meter: recurring[meter] is required when "
                "recurring[usage_type] is metered.",
                "recurring[meter]",
                "parameter_missing",
            )
        if meter:
            s.col("billing.meter").get(meter, param="recurring[meter]", status=400)
        recurring = {
            "interval": r["interval"],
            "interval_count": to_int(r.get("interval_count", 1), "recurring[interval_count]"),
            "meter": meter,
            "usage_type": usage_type,
            "trial_period_days": to_int(r["trial_period_days"], "recurring[trial_period_days]")
            if r.get("trial_period_days")
            else None,
        }
    price = {
        "id": new_id("price_", 24),
        "object": "price",
        "active": to_bool(p.get("active", True), "active"),
        "billing_scheme": p.get("billing_scheme", "per_unit"),
        "created": s.now(),
        "currency": p["currency"].lower(),
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": p.get("lookup_key"),
        "metadata": _metadata({}, p.get("metadata")),
        "nickname": p.get("nickname"),
        "product": product_id,
        "recurring": recurring,
        "tax_behavior": p.get("tax_behavior", "unspecified"),
        "tiers_mode": p.get("tiers_mode"),
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": unit_amount_decimal,
    }
    s.col("price").add(price)
    s.emit("price.created", price, ctx)
    return price


def update_price(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    price = s.col("price").get(id)
    before = snapshot(price)
    for k in ("nickname", "lookup_key"):
        if k in p:
            price[k] = p[k] or None
    if "active" in p:
        price["active"] = to_bool(p["active"], "active")
    if "metadata" in p:
        price["metadata"] = _metadata(price["metadata"], p["metadata"])
    prev = diff_previous(before, price)
    if prev:
        s.emit("price.updated", price, ctx, prev)
    return price


def list_prices(s: Store, ctx, p: Params) -> dict[str, Any]:
    product = p.get("product")
    active = to_bool(p["active"], "active") if "active" in p else None
    typ = p.get("type")
    lookup_keys = p.get("lookup_keys")
    cf = _list_filter_created(p)

    def pred(o):
        return (
            (product is None or o["product"] == product)
            and (active is None or o["active"] == active)
            and (typ is None or o["type"] == typ)
            and (not lookup_keys or o["lookup_key"] in lookup_keys)
            and cf(o)
        )

    return paginate(s.col("price").newest_first(pred), p, "/v1/prices", "price")


def _plan_from_price(price: dict[str, Any]) -> dict[str, Any]:
    r = price["recurring"] or {}
    return {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": price["billing_scheme"],
        "created": price["created"],
        "currency": price["currency"],
        "interval": r.get("interval"),
        "interval_count": r.get("interval_count"),
        "livemode": False,
        "metadata": price["metadata"],
        "meter": r.get("meter"),
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": price["tiers_mode"],
        "transform_usage": None,
        "trial_period_days": r.get("trial_period_days"),
        "usage_type": r.get("usage_type", "licensed"),
    }


# ---------------------------------------------------------------------------- subscriptions
def _make_item(
    s: Store, sub_id: str, spec: Params, idx: int, period: tuple[int, int]
) -> dict[str, Any]:
    price_id = spec.get("price")
    if not price_id:
        raise missing(f"items[{idx}][price]")
    price = s.col("price").get(price_id, param=f"items[{idx}][price]", status=400)
    if price["recurring"] is None:
        raise invalid(
            "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.",
            f"items[{idx}][price]",
        )
    metered = price["recurring"]["usage_type"] == "metered"
    if metered and spec.get("quantity") not in (None, ""):
        raise invalid(
            "Quantity should not be specified where usage_type is `metered`.",
            f"items[{idx}][quantity]",
        )
    quantity = None if metered else to_int(spec.get("quantity", 1), f"items[{idx}][quantity]")
    item: dict[str, Any] = {
        "id": new_id("si_", 14),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": s.now(),
        "current_period_end": period[1],
        "current_period_start": period[0],
        "discounts": [],
        "metadata": _metadata({}, spec.get("metadata")),
        "plan": _plan_from_price(price),
        "price": snapshot(price),
        "quantity": quantity,
        "subscription": sub_id,
        "tax_rates": [],
    }
    return item


def _items_list(sub: dict[str, Any]) -> dict[str, Any]:
    return sub["items"]


def _sync_items(s: Store, sub: dict[str, Any]) -> None:
    items = [s.col("subscription_item").objects[i] for i in sub["_item_ids"]]
    sub["items"] = {
        "object": "list",
        "data": [snapshot(i) for i in items],
        "has_more": False,
        "total_count": len(items),
        "url": f"/v1/subscription_items?subscription={sub['id']}",
    }


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """Strip internal ``_`` keys."""
    if any(k.startswith("_") for k in obj):
        return {k: v for k, v in obj.items() if not k.startswith("_")}
    return obj


def create_subscription(s: Store, ctx, p: Params, *, emit_invoice: bool = True) -> dict[str, Any]:
    customer_id = p.get("customer")
    if not customer_id:
        raise missing("customer")
    cust = s.col("customer").get(customer_id, param="customer", status=400)
    if cust.get("deleted"):
        raise no_such("customer", customer_id, param="customer", status=400)
    items_spec = p.get("items")
    if not items_spec:
        raise missing("items")
    if isinstance(items_spec, dict):
        items_spec = list(items_spec.values())
    now = s.now()
    sub_id = new_id("sub_", 24)
    first_price = s.col("price").get(
        items_spec[0].get("price") or "", param="items[0][price]", status=400
    )
    rec = first_price["recurring"] or {"interval": "month", "interval_count": 1}
    trial_days = p.get("trial_period_days")
    trial_end = p.get("trial_end")
    if trial_days:
        trial_end = now + to_int(trial_days, "trial_period_days") * DAY
    elif trial_end not in (None, "", "now"):
        trial_end = to_int(trial_end, "trial_end")
    else:
        trial_end = None
    period_end = trial_end or add_interval(now, rec["interval"], rec["interval_count"])
    items = [_make_item(s, sub_id, spec, i, (now, period_end)) for i, spec in enumerate(items_spec)]
    for it in items:
        s.col("subscription_item").add(it)
    currency = first_price["currency"]
    sub = {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": period_end if trial_end else now,
        "billing_cycle_anchor_config": None,
        "billing_mode": {
            "type": "flexible",
            "flexible": {"proration_discounts": "included"},
            "updated_at": now,
        },
        "billing_schedules": [],
        "billing_thresholds": None,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": p.get("collection_method", "charge_automatically"),
        "created": now,
        "currency": currency,
        "customer": customer_id,
        "customer_account": None,
        "days_until_due": to_int(p["days_until_due"], "days_until_due")
        if p.get("days_until_due")
        else None,
        "default_payment_method": p.get("default_payment_method"),
        "default_source": None,
        "default_tax_rates": [],
        "description": p.get("description"),
        "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": None,
        "latest_invoice": None,
        "livemode": False,
        "managed_payments": {"enabled": False},
        "metadata": _metadata({}, p.get("metadata")),
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": now,
        "status": "trialing" if trial_end else "active",
        "test_clock": None,
        "transfer_data": None,
        "trial_end": trial_end,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": now if trial_end else None,
        "_item_ids": [i["id"] for i in items],
    }
    if p.get("cancel_at_period_end") is not None:
        sub["cancel_at_period_end"] = to_bool(p["cancel_at_period_end"], "cancel_at_period_end")
        if sub["cancel_at_period_end"]:
            sub["cancel_at"] = period_end
    _sync_items(s, sub)
    s.col("subscription").add(sub)
    s.emit("customer.subscription.created", public(sub), ctx)
    if emit_invoice:
        inv = _subscription_invoice(s, ctx, sub, "subscription_create", (now, now))
        sub["latest_invoice"] = inv["id"]
    return sub


def _subscription_invoice(
    s: Store, ctx, sub: dict[str, Any], reason: str, period: tuple[int, int], usage: bool = False
) -> dict[str, Any]:
    """Create, finalize and pay an invoice for a subscription (charge succeeds in the emulator)."""
    lines = []
    for iid in sub["_item_ids"]:
        it = s.col("subscription_item").objects[iid]
        price = it["price"]
        metered = (price["recurring"] or {}).get("usage_type") == "metered"
        if metered:
            if not usage:
                continue
            meter = s.col("billing.meter").objects.get(price["recurring"]["meter"])
            qty_f = 0.0
            if meter is not None:
                series = s.meters.series.get((meter["event_name"], sub["customer"]))
                qty_f = s.meters._aggregate(
                    series, meter["default_aggregation"]["formula"], period[0], period[1]
                )
            qty = int(qty_f)
        else:
            qty = it["quantity"] or 1
        unit = price["unit_amount"] or 0
        lines.append(_line(s, price, qty, qty * unit, period, sub["id"], it["id"], metered))
    inv = _new_invoice(s, sub["customer"], sub["id"], reason, lines, period, sub["currency"])
    s.col("invoice").add(inv)
    s.emit("invoice.created", inv, ctx)
    _finalize(s, ctx, inv)
    _pay(s, ctx, inv)
    return inv


def _line(s: Store, price, qty, amount, period, sub_id, si_id, metered) -> dict[str, Any]:
    return {
        "id": new_id("il_", 24),
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": f"{qty} × {price['product']}",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "parent": {
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
                "subscription_item": si_id,
            },
            "type": "subscription_item_details",
        },
        "period": {"end": period[1], "start": period[0]},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": qty,
        "quantity_decimal": str(qty),
        "subscription": sub_id,
        "subtotal": amount,
        "taxes": [],
    }


def _new_invoice(
    s: Store, customer_id, sub_id, reason, lines, period, currency="usd", p: Params | None = None
):
    p = p or {}
    cust = s.col("customer").objects.get(customer_id, {})
    total = sum(line["amount"] for line in lines)
    now = s.now()
    inv_id = new_id("in_", 24)
    for line in lines:
        line["invoice"] = inv_id
    return {
        "id": inv_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Stripe Emulator",
        "account_tax_ids": None,
        "amount_due": total,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": total,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": to_bool(p.get("auto_advance", sub_id is not None), "auto_advance"),
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": reason,
        "collection_method": p.get("collection_method", "charge_automatically"),
        "created": now,
        "currency": (p.get("currency") or currency or "usd").lower(),
        "custom_fields": None,
        "customer": customer_id,
        "customer_account": None,
        "customer_address": cust.get("address"),
        "customer_email": cust.get("email"),
        "customer_name": cust.get("name"),
        "customer_phone": cust.get("phone"),
        "customer_shipping": cust.get("shipping"),
        "customer_tax_exempt": cust.get("tax_exempt", "none"),
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": p.get("description"),
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{inv_id}/lines",
        },
        "livemode": False,
        "metadata": _metadata({}, p.get("metadata")),
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": (
            {
                "quote_details": None,
                "subscription_details": {"metadata": None, "subscription": sub_id},
                "type": "subscription_details",
            }
            if sub_id
            else None
        ),
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": period[1],
        "period_start": period[0],
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": None,  # removed in basil; kept null (the key exists in Stripe's fixture)
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "test_clock": None,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": total,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": now,
    }


def _finalize(s: Store, ctx, inv: dict[str, Any]) -> None:
    if inv["status"] != "draft":
        raise StripeError(
            400, "This invoice is already finalized, you can't re-finalize a non-draft invoice."
        )
    prev = {"status": "draft", "number": None}
    cust = s.col("customer").objects.get(inv["customer"], {})
    seq = cust.get("next_invoice_sequence", 1)
    if cust:
        cust["next_invoice_sequence"] = seq + 1
    now = s.now()
    inv["status"] = "open"
    inv["number"] = f"{cust.get('invoice_prefix', 'EMU')}-{seq:04d}"
    inv["effective_at"] = now
    inv["status_transitions"]["finalized_at"] = now
    inv["hosted_invoice_url"] = f"https://invoice.stripe.com/i/emulator/{inv['id']}"
    inv["invoice_pdf"] = f"https://pay.stripe.com/invoice/emulator/{inv['id']}/pdf"
    s.emit("invoice.finalized", inv, ctx, prev)


def _pay(s: Store, ctx, inv: dict[str, Any]) -> None:
    if inv["status"] != "open":
        raise StripeError(
            400, f"Invoice is already {inv['status']}.", code="invoice_unexpected_state"
        )
    prev = {"status": "open", "amount_paid": 0, "amount_remaining": inv["amount_remaining"]}
    now = s.now()
    inv["status"] = "paid"
    inv["attempted"] = True
    inv["attempt_count"] += 1
    inv["amount_paid"] = inv["amount_due"]
    inv["amount_remaining"] = 0
    inv["status_transitions"]["paid_at"] = now
    s.emit("invoice.paid", inv, ctx, prev)
    s.emit("invoice.payment_succeeded", inv, ctx)
    # Paying the overdue invoice brings a past_due subscription back to active, as in Stripe.
    sub_id = ((inv.get("parent") or {}).get("subscription_details") or {}).get("subscription")
    sub = s.col("subscription").objects.get(sub_id) if sub_id else None
    if sub is not None and sub["status"] == "past_due":
        before = snapshot(public(sub))
        sub["status"] = "active"
        s.emit("customer.subscription.updated", public(sub), ctx, diff_previous(before, public(sub)))


def fail_invoice_payment(s: Store, ctx, id: str) -> dict[str, Any]:
    """Test helper: a payment attempt on an open invoice was declined. As Stripe does, the invoice
    stays open with one more attempt, `invoice.payment_failed` is sent, and an active subscription
    billed by it becomes `past_due`."""
    inv = s.col("invoice").get(id)
    if inv["status"] == "draft":
        _finalize(s, ctx, inv)
    if inv["status"] != "open":
        raise StripeError(
            400, f"Invoice is already {inv['status']}.", code="invoice_unexpected_state"
        )
    inv["attempted"] = True
    inv["attempt_count"] += 1
    s.emit("invoice.payment_failed", inv, ctx)
    sub_id = ((inv.get("parent") or {}).get("subscription_details") or {}).get("subscription")
    sub = s.col("subscription").objects.get(sub_id) if sub_id else None
    if sub is not None and sub["status"] in ("active", "trialing"):
        before = snapshot(public(sub))
        sub["status"] = "past_due"
        s.emit("customer.subscription.updated", public(sub), ctx, diff_previous(before, public(sub)))
    return inv


def get_subscription(s: Store, id: str) -> dict[str, Any]:
    return s.col("subscription").get(id)


def retrieve_subscription(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    return get_subscription(s, id)


def update_subscription(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    sub = get_subscription(s, id)
    if sub["status"] == "canceled":
        raise StripeError(
            400,
            "A canceled subscription can only update its cancellation_details and metadata.",
            param=None,
        )
    before = snapshot(public(sub))
    if "metadata" in p:
        sub["metadata"] = _metadata(sub["metadata"], p["metadata"])
    if "description" in p:
        sub["description"] = p["description"] or None
    if "cancel_at_period_end" in p:
        flag = to_bool(p["cancel_at_period_end"], "cancel_at_period_end")
        sub["cancel_at_period_end"] = flag
        first = s.col("subscription_item").objects[sub["_item_ids"][0]]
        sub["cancel_at"] = first["current_period_end"] if flag else None
    if "cancel_at" in p:
        sub["cancel_at"] = to_int(p["cancel_at"], "cancel_at") if p["cancel_at"] else None
    if "items" in p:
        specs = p["items"]
        if isinstance(specs, dict):
            specs = list(specs.values())
        first = s.col("subscription_item").objects[sub["_item_ids"][0]]
        period = (first["current_period_start"], first["current_period_end"])
        for i, spec in enumerate(specs):
            if spec.get("id"):
                it = s.col("subscription_item").get(spec["id"], param=f"items[{i}][id]", status=400)
                if to_bool(spec.get("deleted", False), f"items[{i}][deleted]"):
                    sub["_item_ids"].remove(it["id"])
                    del s.col("subscription_item").objects[it["id"]]
                    continue
                if spec.get("quantity") not in (None, ""):
                    it["quantity"] = to_int(spec["quantity"], f"items[{i}][quantity]")
                if spec.get("price"):
                    price = s.col("price").get(
                        spec["price"], param=f"items[{i}][price]", status=400
                    )
                    it["price"] = snapshot(price)
                    it["plan"] = _plan_from_price(price)
                if "metadata" in spec:
                    it["metadata"] = _metadata(it["metadata"], spec["metadata"])
            else:
                it = _make_item(s, sub["id"], spec, i, period)
                s.col("subscription_item").add(it)
                sub["_item_ids"].append(it["id"])
        _sync_items(s, sub)
    prev = diff_previous(before, public(sub))
    if prev:
        s.emit("customer.subscription.updated", public(sub), ctx, prev)
    return sub


def _cancel_subscription(s: Store, ctx, sub: dict[str, Any]) -> None:
    before = snapshot(public(sub))
    now = s.now()
    sub["status"] = "canceled"
    sub["canceled_at"] = now
    sub["ended_at"] = now
    sub["cancellation_details"] = {
        **sub["cancellation_details"],
        "reason": "cancellation_requested",
    }
    s.emit("customer.subscription.deleted", public(sub), ctx, diff_previous(before, public(sub)))


def cancel_subscription(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    sub = get_subscription(s, id)
    if sub["status"] == "canceled":
        raise StripeError(
            400,
            f"No such subscription: '{id}'; it has already been canceled.",
            code="resource_missing",
            param="id",
        )
    _cancel_subscription(s, ctx, sub)
    return sub


def list_subscriptions(s: Store, ctx, p: Params) -> dict[str, Any]:
    customer = p.get("customer")
    status = p.get("status")
    price = p.get("price")
    valid = {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "canceled",
        "unpaid",
        "paused",
        "all",
        "ended",
    }
    if status is not None and status not in valid:
        raise invalid(f"Invalid status: {status}", "status", "parameter_invalid_string")
    cf = _list_filter_created(p)

    def pred(o):
        if customer and o["customer"] != customer:
            return False
        if status is None:
            if o["status"] in ("canceled", "incomplete_expired"):
                return False
        elif status == "ended":
            if o["status"] not in ("canceled", "incomplete_expired"):
                return False
        elif status != "all" and o["status"] != status:
            return False
        if price and all(i["price"]["id"] != price for i in o["items"]["data"]):
            return False
        return cf(o)

    return paginate(
        s.col("subscription").newest_first(pred), p, "/v1/subscriptions", "subscription"
    )


def roll_subscriptions(s: Store) -> None:
    """Renew subscriptions whose current period ended (after the emulator clock moved)."""
    now = s.now()
    for sub in list(s.col("subscription").objects.values()):
        if sub["status"] not in ("active", "trialing", "past_due"):
            continue
        items = [s.col("subscription_item").objects[i] for i in sub["_item_ids"]]
        if not items:
            continue
        guard = 0
        while items[0]["current_period_end"] <= now and guard < 500:
            guard += 1
            start, end = items[0]["current_period_start"], items[0]["current_period_end"]
            before = snapshot(public(sub))
            if sub["cancel_at"] and sub["cancel_at"] <= end:
                _cancel_subscription(s, None, sub)
                break
            price = items[0]["price"]
            rec = price["recurring"] or {"interval": "month", "interval_count": 1}
            new_end = add_interval(end, rec["interval"], rec["interval_count"])
            for it in items:
                it["current_period_start"] = end
                it["current_period_end"] = new_end
            if sub["status"] == "trialing":
                sub["status"] = "active"
            _sync_items(s, sub)
            s.emit(
                "customer.subscription.updated",
                public(sub),
                None,
                diff_previous(before, public(sub)),
            )
            inv = _subscription_invoice(
                s, None, sub, "subscription_cycle", (start, end), usage=True
            )
            sub["latest_invoice"] = inv["id"]


# ---------------------------------------------------------------------------- subscription items
def list_subscription_items(s: Store, ctx, p: Params) -> dict[str, Any]:
    sub_id = p.get("subscription")
    if not sub_id:
        raise missing("subscription")
    sub = s.col("subscription").get(sub_id, param="subscription", status=400)
    items = [s.col("subscription_item").objects[i] for i in reversed(sub["_item_ids"])]
    return paginate(items, p, "/v1/subscription_items", "subscription_item")


def retrieve_subscription_item(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    return s.col("subscription_item").get(id)


# ---------------------------------------------------------------------------- invoices
def create_invoice(s: Store, ctx, p: Params) -> dict[str, Any]:
    customer = p.get("customer")
    sub_id = p.get("subscription")
    if sub_id:
        sub = s.col("subscription").get(sub_id, param="subscription", status=400)
        customer = customer or sub["customer"]
    if not customer:
        raise missing("customer")
    s.col("customer").get(customer, param="customer", status=400)
    now = s.now()
    inv = _new_invoice(s, customer, sub_id, "manual", [], (now, now), p.get("currency") or "usd", p)
    s.col("invoice").add(inv)
    s.emit("invoice.created", inv, ctx)
    return inv


def retrieve_invoice(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    return s.col("invoice").get(id)


def finalize_invoice(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    inv = s.col("invoice").get(id)
    _finalize(s, ctx, inv)
    if inv["amount_due"] == 0 and to_bool(
        p.get("auto_advance", inv["auto_advance"]), "auto_advance"
    ):
        _pay(s, ctx, inv)
    return inv


def pay_invoice(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    inv = s.col("invoice").get(id)
    if inv["status"] == "draft":
        _finalize(s, ctx, inv)
    _pay(s, ctx, inv)
    return inv


def void_invoice(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    inv = s.col("invoice").get(id)
    if inv["status"] != "open":
        raise StripeError(
            400, f"You can only void an open invoice; this invoice is {inv['status']}."
        )
    prev = {"status": "open"}
    inv["status"] = "void"
    inv["status_transitions"]["voided_at"] = s.now()
    s.emit("invoice.voided", inv, ctx, prev)
    return inv


def list_invoices(s: Store, ctx, p: Params) -> dict[str, Any]:
    customer, sub_id, status = p.get("customer"), p.get("subscription"), p.get("status")
    cf = _list_filter_created(p)

    def pred(o):
        return (
            (customer is None or o["customer"] == customer)
            and (
                sub_id is None
                or (o["parent"] or {}).get("subscription_details", {}).get("subscription") == sub_id
            )
            and (status is None or o["status"] == status)
            and cf(o)
        )

    return paginate(s.col("invoice").newest_first(pred), p, "/v1/invoices", "invoice")


# ---------------------------------------------------------------------------- checkout sessions
def create_checkout_session(s: Store, ctx, p: Params) -> dict[str, Any]:
    mode = p.get("mode")
    if mode not in ("payment", "setup", "subscription"):
        raise missing("mode") if not mode else invalid(f"Invalid mode: {mode}", "mode")
    line_items = p.get("line_items") or []
    if isinstance(line_items, dict):
        line_items = list(line_items.values())
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
        "metadata": _metadata({}, p.get("metadata")),
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


def retrieve_checkout_session(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    return s.col("checkout.session").get(id)


def list_checkout_sessions(s: Store, ctx, p: Params) -> dict[str, Any]:
    customer, status, sub = p.get("customer"), p.get("status"), p.get("subscription")
    cf = _list_filter_created(p)
    items = s.col("checkout.session").newest_first(
        lambda o: (
            (customer is None or o["customer"] == customer)
            and (status is None or o["status"] == status)
            and (sub is None or o["subscription"] == sub)
            and cf(o)
        )
    )
    return paginate(items, p, "/v1/checkout/sessions", "checkout.session")


def expire_checkout_session(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
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


def complete_checkout_session(s: Store, ctx, id: str) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------- webhook endpoints
def create_webhook_endpoint(s: Store, ctx, p: Params) -> dict[str, Any]:
    if not p.get("url"):
        raise missing("url")
    events = p.get("enabled_events")
    if not events:
        raise missing("enabled_events")
    if isinstance(events, str):
        events = [events]
    we = {
        "id": new_id("we_", 24),
        "object": "webhook_endpoint",
        "api_version": p.get("api_version"),
        "application": None,
        "created": s.now(),
        "description": p.get("description"),
        "enabled_events": list(events),
        "livemode": False,
        "metadata": _metadata({}, p.get("metadata")),
        "status": "enabled",
        "url": p["url"],
    }
    secret = s.config.webhook_secret or ("whsec_" + secrets.token_hex(24))
    s.webhook_secrets[we["id"]] = secret
    s.col("webhook_endpoint").add(we)
    return {**we, "secret": secret}


def update_webhook_endpoint(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    we = s.col("webhook_endpoint").get(id)
    if "url" in p:
        we["url"] = p["url"]
    if "enabled_events" in p:
        ev = p["enabled_events"]
        we["enabled_events"] = [ev] if isinstance(ev, str) else list(ev)
    if "description" in p:
        we["description"] = p["description"] or None
    if "metadata" in p:
        we["metadata"] = _metadata(we["metadata"], p["metadata"])
    if "disabled" in p:
        we["status"] = "disabled" if to_bool(p["disabled"], "disabled") else "enabled"
    return we


def delete_webhook_endpoint(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    s.col("webhook_endpoint").get(id)
    del s.col("webhook_endpoint").objects[id]
    s.webhook_secrets.pop(id, None)
    return {"id": id, "object": "webhook_endpoint", "deleted": True}


def list_webhook_endpoints(s: Store, ctx, p: Params) -> dict[str, Any]:
    return paginate(
        s.col("webhook_endpoint").newest_first(), p, "/v1/webhook_endpoints", "webhook_endpoint"
    )


# ---------------------------------------------------------------------------- events
def list_events(s: Store, ctx, p: Params) -> dict[str, Any]:
    from .state import event_type_matches

    typ = p.get("type")
    types = p.get("types")
    if typ and types:
        raise invalid("You may only specify one of these parameters: type, types.", "types")
    if types is not None:
        if isinstance(types, str):
            types = [types]
        if len(types) > 20:
            raise invalid(
                "types may contain at most 20 event types.", "types", "parameter_invalid_array"
            )
    delivery = (
        to_bool(p["delivery_success"], "delivery_success") if "delivery_success" in p else None
    )
    created = p.get("created")
    if created is not None:
        matches_created(created, 0)  # validate operators early

    def pred(ev):
        if typ and not event_type_matches(typ, ev["type"]):
            return False
        if types and ev["type"] not in types:
            return False
        if delivery is not None and (ev["pending_webhooks"] == 0) != delivery:
            return False
        return matches_created(created, ev["created"])

    items = [ev for ev in s.visible_events() if pred(ev)]
    return paginate(items, p, "/v1/events", "event")


def retrieve_event(s: Store, ctx, p: Params, id: str) -> dict[str, Any]:
    return s.get_event(id)


__all__ = ["API_VERSION"]
