"""Replay every recorded history (tests/histories/*.json) against today's workflow code.

A failure here means a change would break workflows that are already running: put it behind
`workflow.patched(...)`, or re-record (tests/workflow/record_histories.py) if the change is
meant to apply only to new runs and no old run can still be open.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.worker import Interceptor, Replayer

from common.client import data_converter, default_interceptors
from tests.workflow.histories import HISTORIES, load
from workflows import all_workflows

FILES = sorted(HISTORIES.glob("*.json"))


def workflow_type(path: Path) -> str:
    first = json.loads(path.read_text())["events"][0]
    return first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]


def test_every_workflow_type_has_a_history():
    recorded = {workflow_type(p) for p in FILES}
    registered = {w.__temporal_workflow_definition.name for w in all_workflows()}
    assert registered <= recorded, f"no recorded history for {sorted(registered - recorded)}"


def _event_kinds(path: Path) -> set[str]:
    return {e.get("eventType", "") for e in json.loads(path.read_text())["events"]}


def test_histories_cover_continue_as_new_approval_signals_and_children():
    """Not only every type: the paths that replay differently are recorded too."""
    kinds: dict[str, set[str]] = {p.stem: _event_kinds(p) for p in FILES}

    def any_with(fragment: str) -> list[str]:
        return [name for name, k in kinds.items() if any(fragment in x for x in k)]

    assert any_with("CONTINUED_AS_NEW") or any_with("ContinuedAsNew"), "no continue-as-new history"
    assert any_with("UPDATE_ACCEPTED") or any_with("UpdateAccepted"), "no history with an (approval) update"
    assert any_with("SIGNALED") or any_with("Signaled"), "no history with a signal"
    assert any_with("CHILD_WORKFLOW_EXECUTION_COMPLETED") or any_with("ChildWorkflowExecutionCompleted")
    # The run after a continue-as-new starts from carried state.
    last = json.loads((HISTORIES / "reconcile_usage_continue_as_new_last.json").read_text())["events"][0]
    assert "continuedExecutionRunId" in last["workflowExecutionStartedEventAttributes"]


# The worker's own workflow interceptors (common/ui_interceptor.py upserts every run's outcome):
# a history is replayed as the worker ran it.
WORKER_INTERCEPTORS = [i for i in default_interceptors() if isinstance(i, Interceptor)]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_replay(path: Path):
    replayer = Replayer(workflows=all_workflows(), data_converter=data_converter, interceptors=WORKER_INTERCEPTORS)
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure!r}"


@workflow.defn(name="Smoke", sandboxed=False)  # defined in a test module
class SmokeReordered:
    """Smoke with its two activities swapped: the replayer must notice."""

    @workflow.run
    async def run(self, check: dict) -> dict:
        check = await workflow.execute_activity("health.stripe", check, start_to_close_timeout=timedelta(seconds=30))
        return await workflow.execute_activity("health.postgres", check, start_to_close_timeout=timedelta(seconds=30))


def test_histories_cover_the_ui_metadata_and_the_deadman_ping():
    """Runs carrying our search attributes (outcome upserts behind the ui patch) and a scheduled
    run that pinged the dead-man's switch are recorded (tests/workflow/record_ui_histories.py)."""
    plan = json.loads((HISTORIES / "reconcile_usage_ui_plan_approve.json").read_text())["events"]
    started = plan[0]["workflowExecutionStartedEventAttributes"]
    assert "BillingRunKind" in started["searchAttributes"]["indexedFields"]
    assert any(e["eventType"] == "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES" and "BillingOutcome" in json.dumps(e)
               for e in plan)
    scheduled = (HISTORIES / "reconcile_usage_ui_scheduled.json").read_text()
    assert "TemporalScheduledById" in scheduled and '"deadman.ping"' in scheduled


async def test_the_ui_histories_need_the_worker_interceptors():
    """The outcome upserts are commands of the interceptor: a worker (or replayer) without it
    would not reproduce them. Every worker gets it from `common.client.default_interceptors`."""
    replayer = Replayer(workflows=all_workflows(), data_converter=data_converter)
    result = await replayer.replay_workflow(load(HISTORIES / "reconcile_usage_ui_scheduled.json"),
                                            raise_on_replay_failure=False)
    assert result.replay_failure is not None and "nondetermin" in str(result.replay_failure).lower()


async def test_replay_detects_a_non_deterministic_change():
    path = HISTORIES / "smoke.json"
    replayer = Replayer(workflows=[SmokeReordered], data_converter=data_converter)
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()
