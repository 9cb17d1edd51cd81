"""Reading request parameters (integers, booleans, ``created`` filters) and cursor pagination."""

from __future__ import annotations

from typing import Any

from .errors import invalid, no_such


def matches_created(value: Any, created: int, param: str = "created") -> bool:
    """``created=5`` or ``created[gte]=5`` style filter."""
    if value is None:
        return True
    if isinstance(value, dict):
        ops = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
        for op, bound in value.items():
            if op not in ops:
                raise invalid(f"Invalid {param}[{op}]", f"{param}[{op}]", "parameter_unknown")
            if not ops[op](created, to_int(bound, f"{param}[{op}]")):
                return False
        return True
    return created == to_int(value, param)


def to_int(value: Any, param: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid integer: {value}", param, "parameter_invalid_integer") from None


def to_bool(value: Any, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "True", "1"):
        return True
    if value in ("false", "False", "0"):
        return False
    raise invalid(f"Invalid boolean: {value}", param, "parameter_invalid_boolean")


def paginate(
    items: list[dict[str, Any]], params: dict[str, Any], url: str, kind: str = "object"
) -> dict[str, Any]:
    """Cursor pagination over ``items`` (already newest first)."""
    limit = to_int(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise invalid(
            "This value must be greater than or equal to 1 and less than or equal to 100."
            if limit > 0
            else "This value must be greater than or equal to 1.",
            "limit",
            "parameter_invalid_integer",
        )
    after, before = page_cursors(params)
    if after:
        idx = _index_of(items, after, kind, "starting_after")
        page = items[idx + 1 : idx + 1 + limit]
        has_more = idx + 1 + limit < len(items)
    elif before:
        idx = _index_of(items, before, kind, "ending_before")
        lo = max(0, idx - limit)
        page = items[lo:idx]
        has_more = lo > 0
    else:
        page = items[:limit]
        has_more = len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


def page_cursors(params: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(starting_after, ending_before)``; at most one of them may be given."""
    after = params.get("starting_after") or None
    before = params.get("ending_before") or None
    if after and before:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            "ending_before",
        )
    return after, before


def _index_of(items: list[dict[str, Any]], obj_id: str, kind: str, param: str) -> int:
    for i, o in enumerate(items):
        if o.get("id") == obj_id:
            return i
    raise no_such(kind, obj_id, param=param, status=400)
