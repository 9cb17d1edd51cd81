"""RollingReadBack: one slice of the rolling read-back (DESIGN.md "Three paths"), started by the
`usage-readback` schedule every few minutes.

Each run claims the customers due to keep the cycle on pace (readback/activities.py) and
reconciles exactly them with a ReconcileUsage child over Stripe's window: one summary read per
(customer, meter), in the budget's `readback` lane, so the reads never take more than the
configured share of the summary endpoint across every worker. The child corrects as a full pass
does (pushes, cancels, compensations; over-reporting held for approval) and leaves settling to
the usage tick, which verifies every push once it settled. A child that holds over-reporting for
an approval is left waiting (it outlives this run) and the slice counts as read: the next slice
runs on time. Deterministic orchestration only."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

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
CHILD_POLL = timedelta(seconds=30)


@workflow.defn(name="RollingReadBack", failure_exception_types=[ValidationError])
class RollingReadBack:
    @workflow.run
    async def run(self, inp: ReadBackInput) -> ReadBackResult:
        try:
            result = await self._run(inp)
        except ActivityError:
            await ping_after_run(failed=True)
            raise
        if result.status != SliceStatus.FAILED and inp.mode == Mode.APPLY:
            await ping_after_run(failed=False)
        return result

    async def _run(self, inp: ReadBackInput) -> ReadBackResult:
        if inp.mode == Mode.PLAN:  # bad input: fail the run, never wedge its task
            raise ApplicationError("RollingReadBack supports dry-run and apply, not plan", type="ValidationError",
                                   non_retryable=True)
        claim: SliceClaim = await workflow.execute_activity_method(
            ReadBackActivities.claim_slice,
            ClaimInput(claimed_by=workflow.info().workflow_id, cycle_seconds=inp.cycle_hours * 3600,
                       every_seconds=inp.every_minutes * 60, budget_share=inp.budget_share),
            **short_step())
        if not claim.due:
            return ReadBackResult(due=False, mode=inp.mode, cycle=claim.cycle)
        child = ReconcileUsageInput(
            mode=inp.mode, actor=inp.actor, lookback_days=inp.lookback_days, page_size=inp.page_size,
            customers_after=claim.after, customers_through=claim.through,
            budget_lane=BudgetLane(name=READBACK_LANE, share=inp.budget_share), verify_after_settle=False,
            approval_timeout_seconds=inp.held_approval_timeout_seconds)
        result = ReadBackResult(due=True, mode=inp.mode, cycle=claim.cycle, slice=claim.slice,
                                customers=claim.customers, keys=claim.customers * claim.meters,
                                on_pace=claim.on_pace, child_id=claim.child_id)
        try:
            handle = await workflow.start_child_workflow(
                ReconcileUsage.run, child, id=claim.child_id,
                # A child waiting for an approval outlives this run (see the module docstring).
                parent_close_policy=workflow.ParentClosePolicy.ABANDON)
            while not handle.done():
                try:
                    await workflow.wait_condition(handle.done, timeout=CHILD_POLL)
                except TimeoutError:
                    status = await workflow.execute_activity_method(
                        ReadBackActivities.run_status, claim.child_id, **short_step())
                    if status == RunStatus.AWAITING_APPROVAL:
                        result.status = SliceStatus.AWAITING_APPROVAL
                        break
            if handle.done():
                usage = handle.result()
                result.counts = usage.counts
                if usage.status != RunStatus.COMPLETED:
                    result.status, result.error = SliceStatus.FAILED, f"run ended {usage.status.value}"
        except ChildWorkflowError as e:
            # The slice is reported failed; its customers are read again next cycle.
            result.status, result.error = SliceStatus.FAILED, failure_message(e)
        await workflow.execute_activity_method(
            ReadBackActivities.finish_slice,
            FinishSliceInput(cycle=claim.cycle, slice=claim.slice, status=result.status, error=result.error,
                             counts=result.counts),
            **short_step())
        return result
