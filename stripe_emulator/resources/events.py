"""Events: ``/v1/events`` (the last 30 days, newest first; ``Store.emit`` creates them)."""

from __future__ import annotations

from typing import Any

from ..errors import invalid
from ..params import matches_created, paginate, to_bool
from ..state import RequestContext, Store, event_type_matches
from .base import Params, Route


def list_events(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
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


def retrieve_event(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    return s.get_event(id)


ROUTES = (
    Route("GET", "/v1/events", list_events),
    Route("GET", "/v1/events/{id}", retrieve_event),
)
