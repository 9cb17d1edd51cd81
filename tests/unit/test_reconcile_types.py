"""Stored and wire shapes of reconcile/types.py and reconcile/plans.py that older versions wrote: a correction plan in
`discrepancies.action_params`, and a page input scheduled by a workflow from before `write_mode`.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from billing.policy import PlannedPush, PushKind
from common.types import Mode
from reconcile.plans import (
    CounterCorrection,
    CounterRepair,
    StripeCorrection,
    plan_from_json,
    plan_to_json,
)
from reconcile.types import MeterInfo, PageInput, Policy, RunContext, WriteMode

# action_params exactly as the versions before CorrectionPlan stored them (a dict flattened
# with Decimals as strings and dates/datetimes in isoformat).
OLD_COUNTER_ROW = {"counter": {"period_start": "2026-11-01", "period_end": "2026-12-01",
                               "expected_before": "7", "value": "10.5", "quota": None}}
OLD_STRIPE_ROW = {
    "expected_pushed": "15", "needs_approval": True, "cancel": ["br_a"], "mark_failed": [],
    "timestamp": "2026-11-12T12:00:00+00:00",
    "push": {"identifier": "br_b", "value": "-5", "kind": "compensation",
             "event_timestamp": "2026-11-12T12:00:00+00:00", "replaces": None},
}
OLD_CANCEL_ONLY_ROW = {"expected_pushed": "5", "needs_approval": False, "cancel": ["br_a"],
                       "mark_failed": [], "timestamp": "2026-11-15T08:00:00+00:00", "push": None}
NOON = datetime(2026, 11, 12, 12, tzinfo=UTC)


def test_an_old_counter_row_reads_back_as_its_plan():
    plan = plan_from_json(OLD_COUNTER_ROW)
    assert plan == CounterCorrection(counter=CounterRepair(
        period_start=date(2026, 11, 1), period_end=date(2026, 12, 1), expected_before=Decimal(7),
        value=Decimal("10.5"), quota=None))
    assert plan.action == "set_counter"


def test_an_old_stripe_row_reads_back_as_its_plan():
    plan = plan_from_json(OLD_STRIPE_ROW)
    assert plan == StripeCorrection(
        expected_pushed=Decimal(15), needs_approval=True, cancel=["br_a"], timestamp=NOON,
        push=PlannedPush("br_b", Decimal(-5), PushKind.COMPENSATION, NOON))
    assert plan.action == "cancel+push_compensation"
    cancel_only = plan_from_json(OLD_CANCEL_ONLY_ROW)
    assert isinstance(cancel_only, StripeCorrection) and cancel_only.push is None
    assert cancel_only.action == "cancel"


@pytest.mark.parametrize("row", [OLD_COUNTER_ROW, OLD_STRIPE_ROW, OLD_CANCEL_ONLY_ROW])
def test_new_rows_keep_the_old_shape(row: dict):
    """Same keys at the same places: a reader of the old JSON (CSV export, SQL, tests) is unaffected."""
    stored = plan_to_json(plan_from_json(row))
    assert json.loads(json.dumps(stored)).keys() == row.keys()
    assert plan_from_json(stored) == plan_from_json(row)
    assert plan_from_json(json.dumps(row)) == plan_from_json(row)  # JSON text (no jsonb codec)


def test_no_plan_is_stored_as_null_and_a_broken_row_fails_loudly():
    assert plan_to_json(None) is None and plan_from_json(None) is None
    with pytest.raises(ValidationError):
        plan_from_json({"push": {"identifier": "x"}})  # no expected_pushed: never applied blind


CTX = RunContext(run_id="r", workflow_run_id="w", mode=Mode.PLAN, window_start=date(2026, 11, 1),
                 window_end=date(2026, 11, 15), meters=[MeterInfo(event_name="m", stripe_meter_id="mtr")],
                 policy=Policy(epsilon=Decimal("0.005"), settle_seconds=60,
                               auto_approve_over_reporting=False, page_size=10))


@pytest.mark.parametrize(("observe_only", "verify", "expected"), [
    (False, False, WriteMode.PLAN), (True, False, WriteMode.OBSERVE), (True, True, WriteMode.OBSERVE)])
def test_a_page_input_from_an_older_workflow_gets_the_same_write_mode(observe_only, verify, expected):
    old = {"context": CTX.model_dump(mode="json"), "cursor": "c9", "observe_only": observe_only, "verify": verify}
    inp = PageInput.model_validate(old)
    assert inp.write_mode == expected and inp.observe_only == observe_only


def test_a_page_input_still_tells_older_workers_observe_only():
    for mode, observe_only in [(WriteMode.OBSERVE, True), (WriteMode.PLAN, False), (WriteMode.APPLY, False)]:
        dumped = PageInput(context=CTX, write_mode=mode).model_dump(mode="json")
        assert dumped["observe_only"] is observe_only and dumped["write_mode"] == mode.value
        assert PageInput.model_validate(dumped).write_mode == mode


@pytest.mark.parametrize(("field", "value", "message"), [
    ("settle_seconds", -5, "greater than or equal to 0"),
    ("settle_seconds", 999_999_999_999, "less than or equal to 604800"),
    ("epsilon", "1", "less than 1"),
    ("epsilon", "-0.01", "greater than or equal to 0"),
    ("page_size", 0, "greater than or equal to 1"),
    ("page_size", -1, "greater than or equal to 1"),
    ("page_size", 5001, "less than or equal to 5000"),
])
def test_the_run_input_has_the_bounds_of_the_settings(field: str, value: object, message: str) -> None:
    from reconcile.types import ReconcileUsageInput

    with pytest.raises(ValidationError, match=message):
        ReconcileUsageInput.model_validate({"mode": "apply", field: value})
    # The resolved policy a run carries (and continue-as-new validates again) is bounded too.
    good = {"epsilon": "0.005", "settle_seconds": 600, "auto_approve_over_reporting": False, "page_size": 500}
    with pytest.raises(ValidationError, match=message):
        Policy.model_validate({**good, field: value})
    Policy.model_validate(good)
