"""Products: ``/v1/products``."""

from __future__ import annotations

from typing import Any

from ..errors import invalid, missing
from ..params import paginate, to_bool
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


def create_product(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
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
        "metadata": merge_metadata({}, p.get("metadata")),
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


def update_product(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    prod = s.col("product").get(id)
    before = snapshot(prod)
    fields = ("name", "description", "unit_label", "statement_descriptor", "url", "default_price")
    set_fields(prod, p, fields, flags=("active",))
    prev = diff_previous(before, prod)
    if prev:
        prod["updated"] = s.now()
        s.emit("product.updated", prod, ctx, prev)
    return prod


def list_products(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    active = to_bool(p["active"], "active") if "active" in p else None
    cf = created_filter(p)
    items = s.col("product").newest_first(
        lambda o: (active is None or o["active"] == active) and cf(o)
    )
    return paginate(items, p, "/v1/products", "product")


ROUTES = (
    Route("POST", "/v1/products", create_product),
    Route("GET", "/v1/products", list_products),
    Route("GET", "/v1/products/{id}", retrieve("product")),
    Route("POST", "/v1/products/{id}", update_product),
)
