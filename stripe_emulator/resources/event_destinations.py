"""Event destinations and v2 events: ``POST /v2/core/event_destinations`` (JSON body; thin
payloads to a webhook URL), ``GET /v2/core/events/{id}`` (the full event a thin notification
points to), and ``emit_thin`` (used by resources that report asynchronously, such as meter
events Stripe accepts and then rejects: ``v1.billing.meter.error_report_triggered``)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from ..errors import invalid, missing, no_such
from ..state import RequestContext, Store, new_id
from .base import Params, Route

KIND = "v2.core.event_destination"


def iso(ts: float) -> str:
    """v2 timestamps: RFC 3339 with milliseconds, UTC."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_event_destination(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    for field in ("name", "type", "enabled_events", "event_payload"):
        if not p.get(field):
            raise missing(field)
    if p["type"] != "webhook_endpoint":
        raise invalid("Only type webhook_endpoint is supported by the emulator.", "type")
    if p["event_payload"] not in ("thin", "snapshot"):
        raise invalid("event_payload must be thin or snapshot.", "event_payload")
    url = (p.get("webhook_endpoint") or {}).get("url")
    if not url:
        raise missing("webhook_endpoint.url")
    secret = s.config.webhook_secret or ("whsec_" + secrets.token_hex(24))
    dest = {
        "id": new_id("ed_", 24),
        "object": KIND,
        "created": iso(s.now()),
        "description": p.get("description"),
        "enabled_events": list(p["enabled_events"]),
        "event_payload": p["event_payload"],
        "livemode": False,
        "metadata": p.get("metadata") or {},
        "name": p["name"],
        "status": "enabled",
        "type": "webhook_endpoint",
        "updated": iso(s.now()),
        # [U] Stripe shows the signing secret in the Dashboard; the emulator returns it here.
        "webhook_endpoint": {"url": url, "signing_secret": secret},
    }
    s.webhook_secrets[dest["id"]] = secret
    s.col(KIND).add(dest)
    return dest


def retrieve_v2_event(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    event = s.v2_events.get(id)
    if event is None:
        raise no_such("event", id)
    return event


def emit_thin(s: Store, event_type: str, related_object: dict[str, str] | None, data: dict[str, Any]) -> dict[str, Any]:
    """Record a v2 event and deliver its thin notification (no ``data``) to every enabled
    thin destination listening to ``event_type``."""
    event: dict[str, Any] = {
        "id": new_id("evt_test_", 24),
        "object": "v2.core.event",
        "type": event_type,
        "created": iso(s.clock.now_float()),
        "livemode": False,
        "context": None,
        "reason": None,
        "related_object": related_object,
        "data": data,
    }
    s.v2_events[event["id"]] = event
    destinations = [d["id"] for d in s.col(KIND).objects.values()
                    if d["status"] == "enabled" and d["event_payload"] == "thin"
                    and event_type in d["enabled_events"]]
    if destinations:
        notification = {k: v for k, v in event.items() if k != "data" and v is not None}
        for listener in s.listeners:
            listener({"event": notification, "endpoints": destinations})
    return event


ROUTES = (
    Route("POST", "/v2/core/event_destinations", create_event_destination),
    Route("GET", "/v2/core/events/{id}", retrieve_v2_event),
)
