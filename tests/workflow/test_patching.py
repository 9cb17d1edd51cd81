"""Changing a workflow safely: the change behind `workflow.patched(...)` still replays the
histories recorded before it (tests/histories/), the same change without the guard does not,
and a new run of the patched workflow takes the new path and replays with it too.

The variant lives in this test module (a workflow of the same name as the real `Smoke`, one
extra activity call) so that the real workflow stays as it is."""

from __future__ import annotations

import uuid

from temporalio import activity, workflow
from temporalio.worker import Replayer, Worker

from common.client import data_converter
from common.options import smoke_check
from health.types import SmokeCheck
from tests.workflow.histories import HISTORIES, load

STEP = smoke_check()  # the real Smoke's options
PATCH_ID = "smoke-check-stripe-twice"


@workflow.defn(name="Smoke", sandboxed=False)
class SmokePatched:
    """Smoke v2: checks Stripe a second time, only in runs that started after the change."""

    @workflow.run
    async def run(self, check: SmokeCheck) -> SmokeCheck:
        check = await workflow.execute_activity(
            "health.postgres", check, result_type=SmokeCheck, **STEP)
        check = await workflow.execute_activity(
            "health.stripe", check, result_type=SmokeCheck, **STEP)
        if workflow.patched(PATCH_ID):
            check = await workflow.execute_activity(
                "health.stripe", check, result_type=SmokeCheck, **STEP)
        return check


@workflow.defn(name="Smoke", sandboxed=False)
class SmokeUnguarded:
    """The same change without the guard: breaks the runs already in flight."""

    @workflow.run
    async def run(self, check: SmokeCheck) -> SmokeCheck:
        check = await workflow.execute_activity(
            "health.postgres", check, result_type=SmokeCheck, **STEP)
        check = await workflow.execute_activity(
            "health.stripe", check, result_type=SmokeCheck, **STEP)
        return await workflow.execute_activity(
            "health.stripe", check, result_type=SmokeCheck, **STEP)


async def _replay(workflow_cls: type, history) -> BaseException | None:
    replayer = Replayer(workflows=[workflow_cls], data_converter=data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return result.replay_failure


async def test_patched_change_replays_the_recorded_history():
    assert await _replay(SmokePatched, load(HISTORIES / "smoke.json")) is None


async def test_unguarded_change_breaks_the_recorded_history():
    failure = await _replay(SmokeUnguarded, load(HISTORIES / "smoke.json"))
    assert failure is not None and "nondetermin" in str(failure).lower()


stripe_checks: list[str] = []


@activity.defn(name="health.postgres")
async def fake_postgres(check: SmokeCheck) -> SmokeCheck:
    return check.model_copy(update={"migrations_applied": 1, "customers": 0})


@activity.defn(name="health.stripe")
async def fake_stripe(check: SmokeCheck) -> SmokeCheck:
    stripe_checks.append("x")
    return check.model_copy(update={"stripe_meters": ["api_requests"]})


async def test_new_runs_take_the_patched_path_and_replay_with_it(time_skipping_env):
    """A new run records the patch marker and makes the extra call; its history replays with
    the patched code, and the unguarded code can't tell it apart from a v2 run either."""
    client = time_skipping_env.client
    queue = f"patching-{uuid.uuid4().hex[:8]}"
    stripe_checks.clear()
    async with Worker(client, task_queue=queue, workflows=[SmokePatched], activities=[fake_postgres, fake_stripe]):
        handle = await client.start_workflow(SmokePatched.run, SmokeCheck(), id=f"smoke-v2-{uuid.uuid4().hex[:8]}",
                                             task_queue=queue)
        await handle.result()
    assert len(stripe_checks) == 2
    history = await handle.fetch_history()
    markers = [e for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert len(markers) == 1
    assert await _replay(SmokePatched, history) is None
