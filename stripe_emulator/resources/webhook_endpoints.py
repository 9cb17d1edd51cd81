"""Webhook endpoints: ``/v1/webhook_endpoints`` (the signing secret is shown once, at creation;
``webhooks.WebhookDeliverer`` sends the events)."""

from __future__ import annotations

import secrets
from typing import Any

from ..errors import missing
from ..params import paginate, to_bool
from ..state import RequestContext, Store, new_id
from .base import Params, Route, merge_metadata, retrieve, set_fields


def create_webhook_endpoint(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
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
        "metadata": merge_metadata({}, p.get("metadata")),
        "status": "enabled",
        "url": p["url"],
    }
    secret = s.config.webhook_secret or ("whsec_" + secrets.token_hex(24))
    s.webhook_secrets[we["id"]] = secret
    s.col("webhook_endpoint").add(we)
    return {**we, "secret": secret}


def update_webhook_endpoint(
    s: Store, ctx: RequestContext | None, p: Params, id: str
) -> dict[str, Any]:
    we = s.col("webhook_endpoint").get(id)
    if "url" in p:
        we["url"] = p["url"]
    if "enabled_events" in p:
        ev = p["enabled_events"]
        we["enabled_events"] = [ev] if isinstance(ev, str) else list(ev)
    set_fields(we, p, ("description",))
    if "disabled" in p:
        we["status"] = "disabled" if to_bool(p["disabled"], "disabled") else "enabled"
    return we


def delete_webhook_endpoint(
    s: Store, ctx: RequestContext | None, p: Params, id: str
) -> dict[str, Any]:
    s.col("webhook_endpoint").get(id)
    del s.col("webhook_endpoint").objects[id]
    s.webhook_secrets.pop(id, None)
    return {"id": id, "object": "webhook_endpoint", "deleted": True}


def list_webhook_endpoints(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    return paginate(
        s.col("webhook_endpoint").newest_first(), p, "/v1/webhook_endpoints", "webhook_endpoint"
    )


ROUTES = (
    Route("POST", "/v1/webhook_endpoints", create_webhook_endpoint),
    Route("GET", "/v1/webhook_endpoints", list_webhook_endpoints),
    Route("GET", "/v1/webhook_endpoints/{id}", retrieve("webhook_endpoint")),
    Route("POST", "/v1/webhook_endpoints/{id}", update_webhook_endpoint),
    Route("DELETE", "/v1/webhook_endpoints/{id}", delete_webhook_endpoint),
)
