"""Subscription items: ``/v1/subscription_items`` (read only; subscriptions create and change
them), and the ``items`` list a subscription embeds."""

from __future__ import annotations

from typing import Any

from ..errors import invalid, missing
from ..params import paginate, to_int
from ..state import RequestContext, Store, new_id, snapshot
from .base import Params, Route, merge_metadata, retrieve
from .prices import plan_from_price


def make_item(
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
        "metadata": merge_metadata({}, spec.get("metadata")),
        "plan": plan_from_price(price),
        "price": snapshot(price),
        "quantity": quantity,
        "subscription": sub_id,
        "tax_rates": [],
    }
    return item


def sync_items(s: Store, sub: dict[str, Any]) -> None:
    items = [s.col("subscription_item").objects[i] for i in sub["_item_ids"]]
    sub["items"] = {
        "object": "list",
        "data": [snapshot(i) for i in items],
        "has_more": False,
        "total_count": len(items),
        "url": f"/v1/subscription_items?subscription={sub['id']}",
    }


def list_subscription_items(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    sub_id = p.get("subscription")
    if not sub_id:
        raise missing("subscription")
    sub = s.col("subscription").get(sub_id, param="subscription", status=400)
    items = [s.col("subscription_item").objects[i] for i in reversed(sub["_item_ids"])]
    return paginate(items, p, "/v1/subscription_items", "subscription_item")


ROUTES = (
    Route("GET", "/v1/subscription_items", list_subscription_items),
    Route("GET", "/v1/subscription_items/{id}", retrieve("subscription_item")),
)
