"""What the receiver accepts as a Stripe event, and which storage failures are the event's fault.

Pure functions, unit-tested in tests/unit/test_webhook_events.py. The rule they implement: an
event `parse_event` accepts is one the inbox can store, so a validly signed event is either
refused for good (4xx, no row) or stored; only a transient failure (Postgres down) is a 503.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any

import asyncpg

from webhooks.limits import MAX_JSON_DEPTH, json_depth

# What fits the inbox: ids and types are short ASCII in Stripe (`evt_` + 24 characters), and
# text over ~2.7 kB cannot be indexed. `created` is a unix time Postgres can hold (year 9999).
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,251}")
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.]{1,255}")
MAX_OBJECT_ID_LENGTH = 255
MAX_CREATED = 253_402_300_799  # 9999-12-31T23:59:59Z
# jsonb refuses these in any string (keys included).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_MAX_PATH_SHOWN = 200


def parse_event(payload: str) -> dict[str, Any]:
    """The Stripe event in `payload`, or ValueError saying why the inbox can never store it."""
    depth = json_depth(payload)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        event = json.loads(payload, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at {e.pos})") from None
    except (ValueError, RecursionError) as e:  # NaN/Infinity, an integer of more than 4300 digits
        raise ValueError(f"invalid JSON ({e})") from None
    if not isinstance(event, dict) or event.get("object") != "event":
        raise ValueError("not a Stripe event object")
    _check_values(event, "")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise ValueError(f"missing or invalid id {_show(event_id)}: expected evt_ and at most 251 "
                         "letters, digits or _")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not EVENT_TYPE.fullmatch(event_type):
        raise ValueError(f"missing or invalid type {_show(event_type)}: expected at most 255 letters, "
                         "digits, . or _")
    created = event.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise ValueError(f"missing or invalid created {_show(created)}: expected an integer unix time")
    if not 0 <= created <= MAX_CREATED:
        raise ValueError(f"created {_show(created)} is out of range (0 to {MAX_CREATED})")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise ValueError("missing data.object")
    object_id = data["object"].get("id")
    if object_id is not None and (not isinstance(object_id, str) or len(object_id) > MAX_OBJECT_ID_LENGTH):
        raise ValueError(f"invalid data.object.id {_show(object_id)}: expected a string of at most "
                         f"{MAX_OBJECT_ID_LENGTH} characters")
    return event


def signature_timestamp(header: str) -> int | None:
    """The `t=` of a `Stripe-Signature` header."""
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


# SQLSTATE classes about the data itself: 22 data exception (NUL in jsonb, timestamp out of
# range, invalid text), 54 program limit exceeded (index row too large, nesting too deep).
PERMANENT_SQLSTATE_CLASSES = ("22", "54")


def is_permanent_store_error(e: BaseException) -> bool:
    """The database refused the event itself: no retry can store it. (`parse_event` refuses
    every case known; this is the backstop for the ones it does not know.)"""
    if isinstance(e, asyncpg.PostgresError):
        return str(e.sqlstate or "")[:2] in PERMANENT_SQLSTATE_CLASSES
    # asyncpg's client-side DataError (an InterfaceError and a ValueError): an argument it
    # cannot encode, e.g. a number where text goes.
    return isinstance(e, asyncpg.InterfaceError) and isinstance(e, ValueError)


def is_transient_store_error(e: BaseException) -> bool:
    """Postgres down, restarting, overloaded or slow: Stripe should retry (503). Any other
    Postgres error is not provably the event's fault either, so it is a 503 too. Anything else
    is a bug: a 500.

    asyncpg's InternalClientError ("cannot switch to state ...; another operation is in
    progress") comes from a pooled connection whose backend was terminated under it (Postgres
    restarting): seen in tests/integration/test_webhook_edges.py, and transient."""
    return isinstance(e, OSError | TimeoutError | asyncpg.PostgresError | asyncpg.InterfaceError
                      | asyncpg.InternalClientError)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


def _check_values(value: Any, path: str) -> None:
    """Refuse what jsonb cannot hold: NUL characters, unpaired surrogates, infinite numbers
    (1e999 parses as inf). Depth is bounded by MAX_JSON_DEPTH, so recursion is safe."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            _check_text(key, where)
            _check_values(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, f"{path}[{i}]")
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"number out of range at {_path(path)}")


def _check_text(text: str, path: str) -> None:
    m = _UNSTORABLE.search(text)
    if m is not None:
        what = "a NUL character" if m.group() == "\x00" else "an unpaired UTF-16 surrogate"
        raise ValueError(f"{what} at {_path(path)}")


def _path(path: str) -> str:
    shown = ascii(path)[1:-1]  # the path may hold the very characters refused
    return (shown[:_MAX_PATH_SHOWN] + "...") if len(shown) > _MAX_PATH_SHOWN else (shown or "the top level")
