"""The declared schedules (billing/schedules.toml) start workflows `schedules apply` knows, with
inputs those workflows accept: a bad input would only show as a failed run every tick."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel
from temporalio.client import ScheduleOverlapPolicy
from temporalio.workflow import _Definition

from billing import schedules
from common.types import Mode

DEFS = schedules.load()


@pytest.mark.parametrize("d", DEFS, ids=[d.name for d in DEFS])
def test_every_schedule_input_is_valid_for_its_workflow(d: schedules.ScheduleDef):
    [input_type] = _Definition.from_run_fn(schedules.KNOWN_WORKFLOWS[d.workflow]).arg_types
    assert isinstance(input_type, type) and issubclass(input_type, BaseModel)
    input_type.model_validate(d.input)


def test_allocations_are_reconciled_hourly_in_apply_mode():
    d = next(d for d in DEFS if d.name == "allocations-reconcile")
    assert d.workflow == "ReconcileAllocations" and d.input["mode"] == Mode.APPLY.value
    s = d.to_schedule("q")
    assert s.spec.intervals[0].every == timedelta(hours=1)
    assert s.policy.overlap == ScheduleOverlapPolicy.SKIP and s.policy.catchup_window == timedelta(minutes=10)


def test_the_readback_paces_by_its_own_interval():
    d = next(d for d in DEFS if d.name == "usage-readback")
    assert d.workflow == "RollingReadBack" and d.to_schedule("q").spec.intervals[0].every == timedelta(minutes=10)
    assert d.input["cycle_hours"] == 24 and d.input["budget_share"] == 0.25
    wrong = d.model_dump() | {"every": "5m"}  # slices sized for 10 minutes, run every 5
    with pytest.raises(ValueError, match="every_minutes"):
        schedules.ScheduleDef.model_validate(wrong)
