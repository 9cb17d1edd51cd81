"""Meter event summaries: ``GET /v1/billing/meters/{id}/event_summaries`` (one customer's
aggregate per hour, per day or over the whole range, newest window first, paginated by window)."""

from __future__ import annotations

import hashlib
from typing import Any

from ..config import DAY
from ..errors import invalid, missing, no_such
from ..params import page_cursors, to_int
from ..state import RequestContext, Store
from .base import Params, Route, reported_usage

WINDOW_SECONDS = {"hour": 3600, "day": DAY}


def list_meter_event_summaries(
    s: Store, ctx: RequestContext | None, p: Params, id: str
) -> dict[str, Any]:
    meter = s.col("billing.meter").get(id)
    customer = p.get("customer")
    if not customer:
        raise missing("customer")
    for req in ("start_time", "end_time"):
        if p.get(req) in (None, ""):
            raise missing(req)
    start = to_int(p["start_time"], "start_time")
    end = to_int(p["end_time"], "end_time")
    for name, v in (("start_time", start), ("end_time", end)):
        if v % 60:
            raise invalid(
                f"{name} must be aligned to minute boundaries.",
                name,
                "parameter_invalid_integer",
            )
    if end <= start:
        raise invalid(
            "end_time must be greater than start_time.", "end_time", "parameter_invalid_integer"
        )
    grouping = p.get("value_grouping_window") or None
    if grouping is not None:
        if grouping not in WINDOW_SECONDS:
            raise invalid(
                "value_grouping_window must be one of day or hour",
                "value_grouping_window",
                "parameter_invalid_string",
            )
        size = WINDOW_SECONDS[grouping]
        label = "hour boundaries" if grouping == "hour" else "day boundaries (00:00 UTC)"
        for name, v in (("start_time", start), ("end_time", end)):
            if v % size:
                raise invalid(
                    f"{name} must be aligned to {label} when value_grouping_window is {grouping}.",
                    name,
                    "parameter_invalid_integer",
                )
    else:
        size = end - start
    if customer not in s.col("customer").objects:
        raise no_such("customer", customer, param="customer", status=400)
    limit = to_int(p.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise invalid(
            "This value must be greater than or equal to 1 and less than or equal to 100.",
            "limit",
            "parameter_invalid_integer",
        )
    after, before = page_cursors(p)
    prefix = _summary_prefix(meter["id"], customer, grouping)
    # windows newest first: window k starts at end - (k+1)*size
    n_windows = (end - start) // size
    first = 0
    if after:
        first = _window_index(after, prefix, start, end, size, "starting_after") + 1
        last = min(n_windows, first + limit)
    elif before:
        idx = _window_index(before, prefix, start, end, size, "ending_before")
        first = max(0, idx - limit)
        last = idx
    else:
        last = min(n_windows, limit)
    data = []
    for k in range(first, last):
        ws = end - (k + 1) * size
        we = ws + size
        data.append(
            {
                "id": f"{prefix}{ws:010x}",
                "object": "billing.meter_event_summary",
                "aggregated_value": reported_usage(s, meter, customer, ws, we),
                "end_time": we,
                "livemode": False,
                "meter": meter["id"],
                "start_time": ws,
            }
        )
    has_more = first > 0 if before else last < n_windows
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "url": f"/v1/billing/meters/{meter['id']}/event_summaries",
    }


def _summary_prefix(meter_id: str, customer: str, grouping: str | None) -> str:
    h = hashlib.sha1(f"{meter_id}|{customer}|{grouping}".encode()).hexdigest()[:12]
    return f"mtrusg_{h}"


def _window_index(sid: str, prefix: str, start: int, end: int, size: int, param: str) -> int:
    try:
        if not sid.startswith(prefix):
            raise ValueError
        ws = int(sid[len(prefix) :], 16)
        if (end - ws) % size or not start <= ws < end:
            raise ValueError
    except ValueError:
        raise no_such("billing.meter_event_summary", sid, param=param, status=400) from None
    return (end - ws) // size - 1


ROUTES = (Route("GET", "/v1/billing/meters/{id}/event_summaries", list_meter_event_summaries),)
