"""RollingReadBack: one slice of the rolling read-back (DESIGN.md "Three paths"), started by the
`usage-readback` schedule every few minutes.

Each run claims the customers due to keep the cycle on pace (readback/activities.py) and
reconciles exactly them with a ReconcileUsage child over Stripe's window: one summary read per
(customer, meter), in the budget's `readback` lane, so the reads never take more than the
configured share of the summary endpoint across every worker. The child corrects as a full pass
does (pushes, cancels, compensations; over-reporting held for approval) and leaves settling to
the usage tick, which verifies every push once it settled. A child that holds over-reporting for
an approval, or still runs after 90% of the interval, is left to go on by itself (it outlives
this run; the slice is recorded `awaiting_approval` or `running`): the next slice runs on time.
A dry-run previews the next slice (its run is a dry-run too) and claims nothing. Deterministic
orchestration only."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
)

from common.failures import failure_message
from common.options import short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from billing.budget_lane import BudgetLane
    from common.types import Mode, RunStatus
    from health.deadman import ping_after_run
    from readback.activities import ReadBackActivities
    from readback.types import (
        READBACK_LANE,
        ClaimInput,
        FinishSliceInput,
        ReadBackInput,
        ReadBackResult,
        SliceClaim,
        SliceStatus,
    )
    from reconcile.types import ReconcileUsageInput
    from reconcile.workflow import ReconcileUsage

# How often the run looks whether its slice's child waits for an approval (then it stops waiting).
CHILD_POLL = timedelta(seconds=5)
MAX_CHILD_POLL = timedelta(minutes=1)
# A slice's run ends (timed out) at the latest this long after its approval timeout.
CHILD_RUN_MARGIN = timedelta(hours=6)
# The share of its interval a read-back run waits for its slice's run, so the next tick is free.
WAIT_SHARE = 0.9


@workflow.defn(name="RollingReadBack", failure_exception_types=[ValidationError])
class RollingReadBack:
    @workflow.run
    async def run(self, inp: ReadBackInput) -> ReadBackResult:
        try:
            result = await self._run(inp)
        except ActivityError:
            await ping_after_run(failed=True)
            raise
        # A healthy slice, or nothing due: a sign of life. Not while earlier slices' runs are
        # stuck reading (an outage) or a slice failed or only observed.
        healthy = result.status not in (SliceStatus.FAILED, SliceStatus.OBSERVE_ONLY) and not result.waiting_on_runs
        if healthy and inp.mode == Mode.APPLY:
            await ping_after_run(failed=False)
        return result

    async def _run(self, inp: ReadBackInput) -> ReadBackResult:
        claim: SliceClaim = await workflow.execute_activity_method(
            ReadBackActivities.claim_slice,
            # Keyed by this run: a retried claim returns its slice; a reset or a reused workflow id
            # is a new run and claims anew.
            ClaimInput(claimed_by=f"{workflow.info().workflow_id}/{workflow.info().run_id}",
                       cycle_seconds=inp.cycle_hours * 3600,
                       every_seconds=inp.every_minutes * 60, budget_share=inp.budget_share,
                       record=inp.mode == Mode.APPLY),
            **short_step())
        if not claim.due:
            return ReadBackResult(due=False, mode=inp.mode, cycle=claim.cycle, waiting_on_runs=claim.waiting_on_runs)
        child = ReconcileUsageInput(
            mode=inp.mode, actor=inp.actor, lookback_days=inp.lookback_days, page_size=inp.page_size,
            customers_after=claim.after, customers_through=claim.through,
            budget_lane=BudgetLane(name=READBACK_LANE, share=inp.budget_share), verify_after_settle=False,
            approval_timeout_seconds=inp.held_approval_timeout_seconds)
        result = ReadBackResult(due=True, mode=inp.mode, cycle=claim.cycle, slice=claim.slice,
                                customers=claim.customers, keys=claim.customers * claim.meters,
                                on_pace=claim.on_pace, child_id=claim.child_id)
        await self._run_slice(child, claim, result, wait=timedelta(minutes=inp.every_minutes) * WAIT_SHARE)
        if inp.mode == Mode.DRY_RUN:
            result.status = SliceStatus.PREVIEW  # nothing was claimed: the cycle is as it was
            return result
        await workflow.execute_activity_method(
            ReadBackActivities.finish_slice,
            FinishSliceInput(cycle=claim.cycle, slice=claim.slice, status=result.status, error=result.error,
                             counts=result.counts),
            **short_step())
        return result

    async def _run_slice(self, child: ReconcileUsageInput, claim: SliceClaim, result: ReadBackResult,
                         wait: timedelta) -> None:
        """Run the slice's ReconcileUsage; stop waiting for it when it waits for an approval or
        has run for `wait` (it goes on by itself), so that the next slice is never skipped."""
        deadline = workflow.now() + wait
        try:
            handle = await workflow.start_child_workflow(
                ReconcileUsage.run, child, id=claim.child_id,
                # A run waiting for an approval or still reading outlives this one, but not forever.
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                execution_timeout=timedelta(seconds=child.approval_timeout_seconds) + CHILD_RUN_MARGIN,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
            polls = 0
            while not handle.done():
                left = deadline - workflow.now()
                polls += 1  # look often first (a slice is usually quick), then once a minute
                poll = min(CHILD_POLL * polls, MAX_CHILD_POLL, left)
                try:
                    await workflow.wait_condition(handle.done, timeout=max(timedelta(seconds=1), poll))
                except TimeoutError:
                    status = await workflow.execute_activity_method(
                        ReadBackActivities.run_status, claim.child_id, **short_step())
                    if status == RunStatus.AWAITING_APPROVAL:
                        result.status = SliceStatus.AWAITING_APPROVAL
                        return
                    if workflow.now() >= deadline:
                        result.status = SliceStatus.RUNNING
                        return
            usage = handle.result()
            result.counts = usage.counts
            if usage.status != RunStatus.COMPLETED:
                result.status, result.error = SliceStatus.FAILED, f"run ended {usage.status.value}"
            elif usage.observe_only:
                result.status = SliceStatus.OBSERVE_ONLY
        except ChildWorkflowError as e:
            # The slice is reported failed; its customers are read again next cycle.
            result.status, result.error = SliceStatus.FAILED, failure_message(e)
        except WorkflowAlreadyStartedError:
            result.status, result.error = SliceStatus.FAILED, f"a run {claim.child_id} already exists"
