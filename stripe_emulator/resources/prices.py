"""Prices: ``/v1/prices`` (a metered price names its meter), and the legacy ``plan`` view of a
price that subscription items carry."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..errors import invalid, missing
from ..params import paginate, to_bool, to_int
from ..state import RequestContext, Store, new_id, snapshot
from .base import (
    Params,
    Route,
    created_filter,
    diff_previous,
    merge_metadata,
    retrieve,
    set_fields,
)
from .products import create_product


def create_price(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
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
    billing_scheme = p.get("billing_scheme", "per_unit")
    if billing_scheme not in ("per_unit", "tiered"):
        raise invalid("Invalid billing_scheme", "billing_scheme", "parameter_invalid_string")
    tiers = tiers_mode = None
    if billing_scheme == "tiered":
        if unit_amount is not None or unit_amount_decimal is not None:
            raise invalid(
                "You may only specify one of these parameters: billing_scheme=tiered, unit_amount.",
                "unit_amount",
            )
        tiers_mode = p.get("tiers_mode")
        if tiers_mode not in ("graduated", "volume"):
            raise missing("tiers_mode") if not tiers_mode else invalid(
                "Invalid tiers_mode", "tiers_mode", "parameter_invalid_string"
            )
        tiers = parse_tiers(p.get("tiers"))
    elif p.get("tiers") or p.get("tiers_mode"):
        raise invalid("Tiers are only allowed with billing_scheme=tiered.", "tiers")
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
        "billing_scheme": billing_scheme,
        "created": s.now(),
        "currency": p["currency"].lower(),
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": p.get("lookup_key"),
        "metadata": merge_metadata({}, p.get("metadata")),
        "nickname": p.get("nickname"),
        "product": product_id,
        "recurring": recurring,
        "tax_behavior": p.get("tax_behavior", "unspecified"),
        # Stripe includes `tiers` only when expanded (`expand[]=tiers`); the emulator always does.
        "tiers": tiers,
        "tiers_mode": tiers_mode,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": unit_amount_decimal,
    }
    s.col("price").add(price)
    s.emit("price.created", price, ctx)
    return price


def parse_tiers(raw: Any) -> list[dict[str, Any]]:
    """``tiers[i][up_to]`` (an integer, the last one ``inf``), each with a unit and/or flat
    amount (integer or ``*_decimal``), in increasing ``up_to``: Stripe's rules and errors."""
    if not raw:
        raise missing("tiers")
    specs = list(raw.values()) if isinstance(raw, dict) else list(raw)
    tiers: list[dict[str, Any]] = []
    last = 0
    for i, t in enumerate(specs):
        up = t.get("up_to")
        if up in (None, ""):
            raise missing(f"tiers[{i}][up_to]")
        final = up == "inf"
        if final != (i == len(specs) - 1):
            raise invalid(
                "The last tier must have `up_to` set to `inf`, and only the last one.",
                f"tiers[{i}][up_to]",
            )
        up_to = None if final else to_int(up, f"tiers[{i}][up_to]")
        if up_to is not None and up_to <= last:
            raise invalid("Tiers must be in increasing order of `up_to`.", f"tiers[{i}][up_to]")
        last = up_to or last
        tier: dict[str, Any] = {"up_to": up_to}
        for name in ("unit_amount", "flat_amount"):
            whole, dec = t.get(name), t.get(f"{name}_decimal")
            if whole not in (None, ""):
                tier[name], tier[f"{name}_decimal"] = to_int(whole, f"tiers[{i}][{name}]"), str(whole)
            elif dec not in (None, ""):
                tier[name], tier[f"{name}_decimal"] = None, str(Decimal(str(dec)))
            else:
                tier[name] = tier[f"{name}_decimal"] = None
        if tier["unit_amount_decimal"] is None and tier["flat_amount_decimal"] is None:
            raise missing(f"tiers[{i}][unit_amount]")
        tiers.append(tier)
    return tiers


def price_amount(price: dict[str, Any], quantity: float) -> int:
    """What Stripe charges for ``quantity`` units of ``price`` (minor units, rounded half up):
    per unit, graduated tiers (each tier prices its own units, plus its flat amount once
    entered) or volume tiers (the tier the total falls in prices every unit)."""
    q = Decimal(str(quantity))
    if price["billing_scheme"] != "tiered":
        total = q * Decimal(price["unit_amount_decimal"] or 0)
    elif price["tiers_mode"] == "volume":
        tier = next(t for t in price["tiers"] if t["up_to"] is None or q <= t["up_to"])
        total = q * _dec(tier["unit_amount_decimal"]) + (_dec(tier["flat_amount_decimal"]) if q > 0 else 0)
    else:
        total, floor = Decimal(0), Decimal(0)
        for t in price["tiers"]:
            if q <= floor:
                break
            top = q if t["up_to"] is None else min(q, Decimal(t["up_to"]))
            total += (top - floor) * _dec(t["unit_amount_decimal"]) + _dec(t["flat_amount_decimal"])
            floor = top
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _dec(v: str | None) -> Decimal:
    return Decimal(v) if v is not None else Decimal(0)


def update_price(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    price = s.col("price").get(id)
    before = snapshot(price)
    set_fields(price, p, ("nickname", "lookup_key"), flags=("active",))
    prev = diff_previous(before, price)
    if prev:
        s.emit("price.updated", price, ctx, prev)
    return price


def list_prices(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    product = p.get("product")
    active = to_bool(p["active"], "active") if "active" in p else None
    typ = p.get("type")
    lookup_keys = p.get("lookup_keys")
    cf = created_filter(p)

    def pred(o):
        return (
            (product is None or o["product"] == product)
            and (active is None or o["active"] == active)
            and (typ is None or o["type"] == typ)
            and (not lookup_keys or o["lookup_key"] in lookup_keys)
            and cf(o)
        )

    return paginate(s.col("price").newest_first(pred), p, "/v1/prices", "price")


def plan_from_price(price: dict[str, Any]) -> dict[str, Any]:
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


ROUTES = (
    Route("POST", "/v1/prices", create_price),
    Route("GET", "/v1/prices", list_prices),
    Route("GET", "/v1/prices/{id}", retrieve("price")),
    Route("POST", "/v1/prices/{id}", update_price),
)
