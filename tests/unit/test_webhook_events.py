"""What the receiver accepts as an event (webhooks.events) and the JSON depth scan
(webhooks.limits): pure functions. The same inputs over HTTP: tests/integration/test_webhook_edges.py."""

from __future__ import annotations

import json
import re

import pytest

from webhooks.events import parse_event, signature_timestamp
from webhooks.limits import MAX_JSON_DEPTH, json_depth

GOOD = {"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "customer.subscription.updated",
        "created": 1_795_000_000, "data": {"object": {"id": "sub_1", "object": "subscription"}}}


def test_a_stripe_event_is_accepted_as_is():
    assert parse_event(json.dumps(GOOD)) == GOOD
    no_object_id = {**GOOD, "data": {"object": {"object": "balance"}}}
    assert parse_event(json.dumps(no_object_id)) == no_object_id


@pytest.mark.parametrize(("text", "depth"), [
    ("{}", 1), ("[]", 1), ('"[[[["', 0), ('{"a": "}}}]]]", "b": [[1]]}', 3), ('"\\"[["', 0),
    ("[" * 1000 + "]" * 1000, 1000), ('{"a": "\\\\", "b": [{"c": []}]}', 4), ("[[[", 3),
])
def test_json_depth_ignores_brackets_in_strings(text, depth):
    assert json_depth(text) == depth


@pytest.mark.parametrize(("event", "message"), [
    ({**GOOD, "created": 253_402_300_800}, "out of range"),
    ({**GOOD, "created": False}, "invalid created False"),
    ({**GOOD, "id": "evt_" + "a" * 252}, "invalid id"),
    ({**GOOD, "id": "ev_1"}, "invalid id 'ev_1'"),
    ({**GOOD, "type": "customer updated"}, "invalid type"),
    ({**GOOD, "data": {"object": {"id": ["sub_1"]}}}, "invalid data.object.id"),
    ({**GOOD, "data": {"object": {"id": "sub_1", "items": [{"note": "\x00"}]}}}, "NUL character at data.object.items[0].note"),
    ({**GOOD, "data": {"object": {"id": "sub_1", "x": "\udc00"}}}, "unpaired UTF-16 surrogate at data.object.x"),
])
def test_what_the_inbox_cannot_store_is_refused(event, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_event(json.dumps(event))


def test_nesting_is_refused_before_parsing():
    deep: object = "x"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    ok = {**GOOD, "data": {"object": {"id": "sub_1", "deep": deep}}}
    with pytest.raises(ValueError, match=f"nested {MAX_JSON_DEPTH + 3} levels deep"):
        parse_event(json.dumps(ok))
    # A million levels: refused, never a RecursionError.
    with pytest.raises(ValueError, match="nested 1000000 levels"):
        parse_event("[" * 1_000_000 + "]" * 1_000_000)


def test_signature_timestamp():
    assert signature_timestamp("t=1795000000,v1=abc,v1=def") == 1_795_000_000
    assert signature_timestamp("v1=abc, t=42") == 42
    assert signature_timestamp("v1=abc") is None
    assert signature_timestamp("t=soon,v1=abc") is None
