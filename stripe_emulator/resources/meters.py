"""Billing meters: ``/v1/billing/meters`` (create, update the display name, deactivate,
reactivate). One meter per event name; meter events find their meter through
``Store.meters_by_event_name``."""

from __future__ import annotations

from typing import Any

from ..errors import StripeError, invalid, missing, unknown_param
from ..params import paginate
from ..state import RequestContext, Store, new_id
from .base import Params, Route, retrieve


def create_meter(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    for req in ("display_name", "event_name"):
        if not p.get(req):
            raise missing(req)
    agg = p.get("default_aggregation")
    if not isinstance(agg, dict) or not agg.get("formula"):
        raise missing("default_aggregation[formula]")
    if agg["formula"] not in ("sum", "count", "last"):
        raise invalid(
            "Invalid default_aggregation[formula]: must be one of sum, count, or last",
            "default_aggregation[formula]",
            "parameter_invalid_string",
        )
    event_name = p["event_name"]
    if len(event_name) > 100:
        raise invalid("event_name must be at most 100 characters", "event_name")
    if event_name in s.meters_by_event_name:
        raise StripeError(
            400,
            f"A meter with event_name '{event_name}' already exists.",
            param="event_name",
            code="resource_already_exists",
        )
    cm = p.get("customer_mapping") or {}
    if cm and cm.get("type", "by_id") != "by_id":
        raise invalid("customer_mapping[type] must be by_id", "customer_mapping[type]")
    if cm and not cm.get("event_payload_key"):
        raise missing("customer_mapping[event_payload_key]")
    vs = p.get("value_settings") or {}
    etw = p.get("event_time_window") or None
    if etw not in (None, "hour", "day"):
        raise invalid("event_time_window must be one of hour or day", "event_time_window")
    now = s.now()
    meter = {
        "id": new_id("mtr_test_", 32),
        "object": "billing.meter",
        "created": now,
        "customer_mapping": {
            "event_payload_key": cm.get("event_payload_key", "stripe_customer_id"),
            "type": "by_id",
        },
        "default_aggregation": {"formula": agg["formula"]},
        "display_name": p["display_name"],
        "event_name": event_name,
        "event_time_window": etw,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now,
        "value_settings": {"event_payload_key": vs.get("event_payload_key", "value")},
    }
    s.col("billing.meter").add(meter)
    s.meters_by_event_name[event_name] = meter
    s.emit("billing.meter.created", meter, ctx)
    return meter


def update_meter(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    meter = s.col("billing.meter").get(id)
    for k in p:
        if k not in ("display_name", "expand"):
            raise unknown_param(k)
    if "display_name" in p and p["display_name"] != meter["display_name"]:
        prev = {"display_name": meter["display_name"]}
        meter["display_name"] = p["display_name"]
        meter["updated"] = s.now()
        s.emit("billing.meter.updated", meter, ctx, prev)
    return meter


def _set_status(
    s: Store, ctx: RequestContext | None, meter_id: str, active: bool
) -> dict[str, Any]:
    meter = s.col("billing.meter").get(meter_id)
    want = "active" if active else "inactive"
    if meter["status"] == want:
        raise StripeError(400, f"Meter {meter_id} is already {want}.", param=None)
    prev = {"status": meter["status"], "status_transitions": dict(meter["status_transitions"])}
    now = s.now()
    meter["status"] = want
    meter["status_transitions"] = {"deactivated_at": None if active else now}
    meter["updated"] = now
    s.emit("billing.meter.reactivated" if active else "billing.meter.deactivated", meter, ctx, prev)
    return meter


def deactivate_meter(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    return _set_status(s, ctx, id, False)


def reactivate_meter(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    return _set_status(s, ctx, id, True)


def list_meters(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    status = p.get("status")
    if status not in (None, "active", "inactive"):
        raise invalid("status must be one of active or inactive", "status")
    items = s.col("billing.meter").newest_first(
        None if status is None else (lambda m: m["status"] == status)
    )
    return paginate(items, p, "/v1/billing/meters", "billing.meter")


ROUTES = (
    Route("POST", "/v1/billing/meters", create_meter),
    Route("GET", "/v1/billing/meters", list_meters),
    Route("GET", "/v1/billing/meters/{id}", retrieve("billing.meter")),
    Route("POST", "/v1/billing/meters/{id}", update_meter),
    Route("POST", "/v1/billing/meters/{id}/deactivate", deactivate_meter),
    Route("POST", "/v1/billing/meters/{id}/reactivate", reactivate_meter),
)
