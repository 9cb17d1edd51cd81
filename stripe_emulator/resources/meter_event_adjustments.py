"""Meter event adjustments: ``POST /v1/billing/meter_event_adjustments`` (``type=cancel`` by
identifier, only within 24 hours of the event being received)."""

from __future__ import annotations

from typing import Any

from ..config import DAY
from ..errors import StripeError, invalid, missing
from ..state import RequestContext, Store
from .base import Params, Route, active_meter

CANCEL_WINDOW = DAY


def create_meter_event_adjustment(
    s: Store, ctx: RequestContext | None, p: Params
) -> dict[str, Any]:
    event_name = p.get("event_name")
    if not event_name:
        raise missing("event_name")
    typ = p.get("type", "cancel")
    if typ != "cancel":
        raise invalid("type must be cancel", "type", "parameter_invalid_string")
    cancel = p.get("cancel")
    if not isinstance(cancel, dict) or not cancel.get("identifier"):
        raise missing("cancel[identifier]")
    identifier = cancel["identifier"]
    active_meter(s, event_name)
    rec = s.meter_events.by_identifier.get(identifier)
    if rec is None or rec.event_name != event_name:
        raise StripeError(
            400,
            f"No meter event found with identifier {identifier} for event name {event_name}.",
            param="cancel[identifier]",
            code="resource_missing",
        )
    now = s.now()
    if rec.created < now - CANCEL_WINDOW:
        raise StripeError(
            400,
            f"The meter event with identifier {identifier} cannot be cancelled: only events "
            "received within the last 24 hours can be cancelled.",
            param="cancel[identifier]",
            code="meter_event_adjustment_window_expired",
        )
    s.meter_events.cancel(rec)
    return {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": False,
        "status": "pending" if s.config.summary_lag_seconds > 0 else "complete",
        "type": "cancel",
    }


ROUTES = (Route("POST", "/v1/billing/meter_event_adjustments", create_meter_event_adjustment),)
