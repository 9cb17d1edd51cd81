"""The paged-run base (common/paged_run.py) through ResyncSubscriptions with stand-in
activities: the order of the activities, a run that starts from carried state (as after a
continue-as-new), and a permanent activity failure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from common.paged import CleanupInput, ContextInput, PagedRunContext, RunScope
from common.types import Mode
from resync.types import (
    CountActiveInput,
    CountActiveResult,
    LocalPageInput,
    LocalPageResult,
    ResyncCarry,
    ResyncCounts,
    ResyncFindings,
    ResyncPageInput,
    ResyncPageResult,
    ResyncPhase,
    ResyncResult,
    ResyncSubscriptionsInput,
)
from resync.workflow import ResyncSubscriptions


@dataclass
class Stand:
    """Stand-ins registered under the real activity names; `calls` records what ran."""

    stripe_pages: dict[str | None, str | None]  # cursor -> next cursor
    unknown_customer: bool = False
    calls: list[str] = field(default_factory=list)

    def activities(self) -> list:
        @activity.defn(name="resync.start")
        async def start(inp: ContextInput) -> PagedRunContext:
            self.calls.append("start")
            if self.unknown_customer:
                raise ApplicationError(f"unknown customer: {inp.customer}", type="UnknownCustomer",
                                       non_retryable=True)
            return PagedRunContext(run_id=inp.run_id, workflow_run_id=inp.workflow_run_id, scope=RunScope(),
                                   mode=inp.mode, actor=inp.actor, reason=inp.reason, manual=inp.manual)

        @activity.defn(name="resync.count_active")
        async def count_active(inp: CountActiveInput) -> CountActiveResult:
            self.calls.append("count_active")
            return CountActiveResult(active=7)

        @activity.defn(name="resync.subscriptions_page")
        async def subscriptions_page(inp: ResyncPageInput) -> ResyncPageResult:
            self.calls.append(f"stripe:{inp.starting_after}")
            return ResyncPageResult(next_cursor=self.stripe_pages[inp.starting_after], pages=1,
                                    counts=ResyncCounts(compared=2, matched=2, active_stripe=2),
                                    findings=ResyncFindings())

        @activity.defn(name="resync.local_page")
        async def local_page(inp: LocalPageInput) -> LocalPageResult:
            self.calls.append(f"local:{inp.after}")
            return LocalPageResult(next_cursor=None, missing_in_stripe=1, sample=["sub_gone"])

        @activity.defn(name="resync.cleanup")
        async def cleanup(inp: CleanupInput) -> None:
            self.calls.append("cleanup")

        return [start, count_active, subscriptions_page, local_page, cleanup]


async def run(env: WorkflowEnvironment, task_queue: str, stand: Stand, inp: ResyncSubscriptionsInput) -> ResyncResult:
    async with Worker(env.client, task_queue=task_queue, workflows=[ResyncSubscriptions],
                      activities=stand.activities()):
        return await env.client.execute_workflow(
            ResyncSubscriptions.run, inp, id=f"paged-{uuid.uuid4().hex[:10]}", task_queue=task_queue)


async def test_phases_run_in_order_with_the_cursor(time_skipping_env, task_queue):
    stand = Stand(stripe_pages={None: "sub_2", "sub_2": None})
    result = await run(time_skipping_env, task_queue, stand, ResyncSubscriptionsInput(mode=Mode.DRY_RUN))
    assert stand.calls == ["start", "count_active", "stripe:None", "stripe:sub_2", "local:None",
                           "count_active", "cleanup"]
    assert (result.counts.compared, result.counts.missing_in_stripe) == (4, 1)
    assert result.findings.missing_in_stripe == ["sub_gone"]
    assert result.count_check.active_local_before == result.count_check.active_local_after == 7


async def test_a_run_with_carried_state_goes_on_where_it_was(time_skipping_env, task_queue):
    """What a run after a continue-as-new does: no start, the carried phase, cursor and counts."""
    ctx = PagedRunContext(run_id="resync-carried", workflow_run_id="first-run", scope=RunScope(),
                          mode=Mode.DRY_RUN, actor="ops", reason="carried")
    carried = ResyncCarry(context=ctx, phase=ResyncPhase.STRIPE, cursor="sub_2", pages_done=1,
                          counts=ResyncCounts(compared=2, active_local_before=5))
    stand = Stand(stripe_pages={"sub_2": None})
    result = await run(time_skipping_env, task_queue, stand, ResyncSubscriptionsInput(carried=carried))
    assert stand.calls == ["stripe:sub_2", "local:None", "count_active", "cleanup"]
    assert (result.run_id, result.actor) == ("resync-carried", "ops")
    assert result.counts.compared == 4 and result.count_check.active_local_before == 5


async def test_a_permanent_activity_failure_fails_the_run_with_its_message_and_type(time_skipping_env, task_queue):
    stand = Stand(stripe_pages={}, unknown_customer=True)
    with pytest.raises(WorkflowFailureError) as err:
        await run(time_skipping_env, task_queue, stand, ResyncSubscriptionsInput(customer="nobody"))
    cause = err.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.message, cause.type, cause.non_retryable) == ("unknown customer: nobody", "UnknownCustomer", True)
    assert stand.calls == ["start"]
