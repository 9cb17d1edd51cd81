"""The one shape every resource module has, and the helpers they share.

A resource module (``customers``, ``meters``, ...) defines handlers and ends with
``ROUTES = (Route(method, path, handler), ...)``. A handler is a plain function
``handler(store, ctx, params, **path_params) -> dict``: ``params`` are the decoded form/query
parameters, ``path_params`` the ``{...}`` parts of the path (``id``). It returns the object (or
list) to send, or raises ``StripeError``. ``resources/__init__.py`` collects the modules' routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import StripeError, invalid
from ..params import matches_created, to_bool
from ..state import RequestContext, Store

Params = dict[str, Any]
Handler = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # a template: ``/v1/customers/{id}``; also the key of the request stats
    handler: Handler


def retrieve(kind: str) -> Handler:
    """The ``GET .../{id}`` handler of a collection: the object, or 404 ``No such <kind>``."""

    def handler(s: Store, ctx: RequestContext, p: Params, id: str) -> dict[str, Any]:
        return s.col(kind).get(id)

    handler.__name__ = f"retrieve_{kind.replace('.', '_')}"
    return handler


def merge_metadata(current: dict[str, Any] | None, given: Any) -> dict[str, Any]:
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


def set_fields(
    obj: dict[str, Any], p: Params, fields: Iterable[str], flags: Iterable[str] = ()
) -> None:
    """An update as Stripe applies it: the ``fields`` given in ``p`` are set (an empty value
    clears to null), the boolean ``flags`` parsed, and ``metadata`` merged."""
    for k in fields:
        if k in p:
            obj[k] = p[k] or None
    for k in flags:
        if k in p:
            obj[k] = to_bool(p[k], k)
    if "metadata" in p:
        obj["metadata"] = merge_metadata(obj["metadata"], p["metadata"])


def created_filter(p: Params) -> Callable[[dict[str, Any]], bool]:
    """The ``created`` / ``created[gte]`` list filter as a predicate on objects."""
    created = p.get("created")
    return lambda o: matches_created(created, o["created"])


def as_list(value: Any) -> list[Any]:
    """A form array (``items[0][price]=...`` decodes to a list, ``items[a][price]`` to a dict)."""
    return list(value.values()) if isinstance(value, dict) else value


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """Strip internal ``_`` keys."""
    if any(k.startswith("_") for k in obj):
        return {k: v for k, v in obj.items() if not k.startswith("_")}
    return obj


def diff_previous(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Top-level ``previous_attributes`` for an update event."""
    prev: dict[str, Any] = {}
    for k, v in before.items():
        if after.get(k) != v:
            if isinstance(v, dict) and isinstance(after.get(k), dict) and k == "metadata":
                prev[k] = {
                    mk: before[k].get(mk)
                    for mk in set(v) | set(after[k])
                    if v.get(mk) != after[k].get(mk)
                }
            else:
                prev[k] = v
    return prev


def reported_usage(s: Store, meter: dict[str, Any], customer: str, start: int, end: int) -> float:
    """The meter's aggregate for ``customer`` over ``[start, end)`` as Stripe reports it now:
    events younger than ``summary_lag_seconds`` are not counted yet."""
    lag = s.config.summary_lag_seconds
    return s.meter_events.aggregate(
        meter["event_name"],
        customer,
        meter["default_aggregation"]["formula"],
        start,
        end,
        s.clock.now_float() - lag if lag else None,
    )


def active_meter(s: Store, event_name: str) -> dict[str, Any]:
    """The active meter counting ``event_name``; 400 ``No active meter found`` otherwise."""
    meter = s.meters_by_event_name.get(event_name)
    if meter is None or meter["status"] != "active":
        raise StripeError(
            400,
            f"No active meter found for event name {event_name}.",
            param="event_name",
            code="resource_missing",
        )
    return meter
