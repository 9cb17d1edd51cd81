"""Subscriptions: ``/v1/subscriptions``, and their renewal when the emulator clock passes the
end of a period (``roll_subscriptions``, called by ``/_emulator/clock/advance``)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from typing import Any

from ..config import DAY
from ..errors import StripeError, invalid, missing, no_such
from ..params import paginate, to_bool, to_int
from ..state import RequestContext, Store, new_id, snapshot
from .base import (
    Params,
    Route,
    as_list,
    created_filter,
    diff_previous,
    merge_metadata,
    public,
    retrieve,
)
from .invoices import subscription_invoice
from .prices import plan_from_price
from .subscription_items import make_item, sync_items


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


def create_subscription(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    customer_id = p.get("customer")
    if not customer_id:
        raise missing("customer")
    cust = s.col("customer").get(customer_id, param="customer", status=400)
    if cust.get("deleted"):
        raise no_such("customer", customer_id, param="customer", status=400)
    items_spec = p.get("items")
    if not items_spec:
        raise missing("items")
    items_spec = as_list(items_spec)
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
    anchor = p.get("billing_cycle_anchor")
    natural_end = add_interval(now, rec["interval"], rec["interval_count"])
    if anchor not in (None, ""):
        anchor = to_int(anchor, "billing_cycle_anchor")
        if anchor < now:
            raise invalid("billing_cycle_anchor cannot be in the past.", "billing_cycle_anchor")
        if anchor > natural_end:
            raise invalid(
                f"billing_cycle_anchor cannot be later than next natural billing date ({natural_end}) for plan",
                "billing_cycle_anchor",
            )
        if trial_end:
            raise invalid(
                "You may only specify one of these parameters: billing_cycle_anchor, trial_end.",
                "billing_cycle_anchor",
            )
    else:
        anchor = None
    # The first period runs to the anchor (a shorter, prorated period) or one interval.
    period_end = trial_end or anchor or natural_end
    items = [make_item(s, sub_id, spec, i, (now, period_end)) for i, spec in enumerate(items_spec)]
    for it in items:
        s.col("subscription_item").add(it)
    currency = first_price["currency"]
    sub = {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": period_end if (trial_end or anchor) else now,
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
        "metadata": merge_metadata({}, p.get("metadata")),
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
    sync_items(s, sub)
    s.col("subscription").add(sub)
    s.emit("customer.subscription.created", public(sub), ctx)
    inv = subscription_invoice(s, ctx, sub, "subscription_create", (now, now))
    sub["latest_invoice"] = inv["id"]
    return sub


def update_subscription(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    sub = s.col("subscription").get(id)
    if sub["status"] == "canceled":
        raise StripeError(
            400,
            "A canceled subscription can only update its cancellation_details and metadata.",
            param=None,
        )
    before = snapshot(public(sub))
    if "metadata" in p:
        sub["metadata"] = merge_metadata(sub["metadata"], p["metadata"])
    if "description" in p:
        sub["description"] = p["description"] or None
    if "cancel_at_period_end" in p:
        flag = to_bool(p["cancel_at_period_end"], "cancel_at_period_end")
        sub["cancel_at_period_end"] = flag
        first = s.col("subscription_item").objects[sub["_item_ids"][0]]
        sub["cancel_at"] = first["current_period_end"] if flag else None
    if "cancel_at" in p:
        sub["cancel_at"] = to_int(p["cancel_at"], "cancel_at") if p["cancel_at"] else None
    if p.get("billing_cycle_anchor") == "now":
        reset_anchor(s, ctx, sub)
    elif p.get("billing_cycle_anchor") not in (None, "", "unchanged"):
        raise invalid("Invalid billing_cycle_anchor: must be one of now or unchanged", "billing_cycle_anchor")
    if "items" in p:
        specs = as_list(p["items"])
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
                    it["plan"] = plan_from_price(price)
                if "metadata" in spec:
                    it["metadata"] = merge_metadata(it["metadata"], spec["metadata"])
            else:
                it = make_item(s, sub["id"], spec, i, period)
                s.col("subscription_item").add(it)
                sub["_item_ids"].append(it["id"])
        sync_items(s, sub)
    prev = diff_previous(before, public(sub))
    if prev:
        s.emit("customer.subscription.updated", public(sub), ctx, prev)
    return sub


def reset_anchor(s: Store, ctx: RequestContext | None, sub: dict[str, Any]) -> None:
    """``billing_cycle_anchor=now``: the current period ends now (its usage is invoiced, a
    draft with the usual grace) and a full period starts now."""
    items = [s.col("subscription_item").objects[i] for i in sub["_item_ids"]]
    now = s.now()
    start = items[0]["current_period_start"]
    rec = items[0]["price"]["recurring"] or {"interval": "month", "interval_count": 1}
    for it in items:
        it["current_period_start"] = now
        it["current_period_end"] = add_interval(now, rec["interval"], rec["interval_count"])
    sub["billing_cycle_anchor"] = now
    if sub["status"] == "trialing":
        sub["status"], sub["trial_end"] = "active", now
    sync_items(s, sub)
    inv = subscription_invoice(s, ctx, sub, "subscription_update", (start, now), usage=True)
    sub["latest_invoice"] = inv["id"]


def mark_canceled(s: Store, ctx: RequestContext | None, sub: dict[str, Any]) -> None:
    """End ``sub`` now (``customer.subscription.deleted``)."""
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


def cancel_subscription(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    sub = s.col("subscription").get(id)
    if sub["status"] == "canceled":
        raise StripeError(
            400,
            f"No such subscription: '{id}'; it has already been canceled.",
            code="resource_missing",
            param="id",
        )
    if to_bool(p.get("invoice_now", False), "invoice_now"):
        # The final invoice bills the usage of the period so far (a draft, with the grace).
        first = s.col("subscription_item").objects[sub["_item_ids"][0]]
        inv = subscription_invoice(
            s, ctx, sub, "subscription_cycle", (first["current_period_start"], s.now()), usage=True
        )
        sub["latest_invoice"] = inv["id"]
    mark_canceled(s, ctx, sub)
    return sub


def list_subscriptions(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
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
    cf = created_filter(p)

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
                # The last period's usage is still invoiced (a draft, with the grace).
                inv = subscription_invoice(s, None, sub, "subscription_cycle", (start, end), usage=True)
                sub["latest_invoice"] = inv["id"]
                mark_canceled(s, None, sub)
                break
            price = items[0]["price"]
            rec = price["recurring"] or {"interval": "month", "interval_count": 1}
            anchor_day = datetime.fromtimestamp(sub["billing_cycle_anchor"], UTC).day
            new_end = add_interval(end, rec["interval"], rec["interval_count"], anchor_day)
            for it in items:
                it["current_period_start"] = end
                it["current_period_end"] = new_end
            if sub["status"] == "trialing":
                sub["status"] = "active"
            sync_items(s, sub)
            s.emit(
                "customer.subscription.updated",
                public(sub),
                None,
                diff_previous(before, public(sub)),
            )
            inv = subscription_invoice(s, None, sub, "subscription_cycle", (start, end), usage=True)
            sub["latest_invoice"] = inv["id"]


ROUTES = (
    Route("POST", "/v1/subscriptions", create_subscription),
    Route("GET", "/v1/subscriptions", list_subscriptions),
    Route("GET", "/v1/subscriptions/{id}", retrieve("subscription")),
    Route("POST", "/v1/subscriptions/{id}", update_subscription),
    Route("DELETE", "/v1/subscriptions/{id}", cancel_subscription),
)
