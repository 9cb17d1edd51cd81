"""The audit vocabulary (common/audit.py): one dotted name per action, old names mapped."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.audit import LEGACY_ACTIONS, AuditAction, AuditInput


def entry(action: str, after: dict | None = None) -> AuditInput:
    return AuditInput(actor="a", action=action, entity_type="t", entity_id="e", after=after, idempotency_key="k")


def test_every_action_is_dotted_and_unique():
    values = [a.value for a in AuditAction]
    assert len(set(values)) == len(values)
    assert all(v.count(".") == 1 and v == v.lower() for v in values)


@pytest.mark.parametrize("old", sorted(LEGACY_ACTIONS))
def test_an_old_name_becomes_its_dotted_action(old: str):
    assert entry(old).action is LEGACY_ACTIONS[old]


def test_a_push_kind_moves_from_the_action_into_after():
    e = entry("push_meter_event:compensation", after={"value": "-3"})
    assert e.action is AuditAction.USAGE_PUSH_METER_EVENT
    assert e.after == {"value": "-3", "kind": "compensation"}


def test_a_dotted_name_and_a_member_validate_to_the_member():
    assert entry("credits.grant").action is AuditAction.CREDITS_GRANT
    assert entry(AuditAction.RUN_PAUSE).action is AuditAction.RUN_PAUSE
    # What a workflow sends to an activity survives the round trip.
    e = entry(AuditAction.RUN_RESUME)
    assert AuditInput.model_validate(e.model_dump(mode="json")) == e


def test_an_unknown_action_is_refused():
    with pytest.raises(ValidationError):
        entry("drop_everything")
