"""ReconcileAllocations: duration usage (allocations, usage records, ledger debits, usage events
for Stripe, payment credits) reconciled and repaired, as a durable workflow.

Deterministic orchestration only. Phases: `allocations` pages (by customer/allocation cursor)
-> `payments` pages (drift candidates, by customer/session cursor) -> in plan mode: wait for an
`approve`/`reject` update, then `applying` (the same pages again in apply mode, fixing only the
approved findings, each re-checked) -> done. The whole state is one model (`AllocationsCarry`),
cursors only, continue-as-new when Temporal suggests it. Pause-aware: while auto-healing is
paused the page activities are observe-only and the run says so."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from common.failures import permanent_failure
from common.options import heartbeat_page, short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from allocations.activities import AllocationActivities
    from allocations.types import (
        MAX_SAMPLE,
        AllocationsCarry,
        AllocationsProgress,
        AllocationsResult,
        ApprovalDecision,
        ApprovalResult,
        AuditDecisionInput,
        PageInput,
        Phase,
        ReconcileAllocationsInput,
        RunOutcome,
        StartInput,
    )
    from common.audit import AuditAction
    from common.paged import ErrorType
    from common.types import Mode

# Activity options from the shared kit (common/options.py): an unknown customer never retries.
STEP = short_step(ErrorType.UNKNOWN_CUSTOMER.value)
PAGE = heartbeat_page(ErrorType.UNKNOWN_CUSTOMER.value)
NEXT_PHASE = {Phase.ALLOCATIONS: Phase.PAYMENTS, Phase.PAYMENTS: Phase.DONE}
# Runs that ended without waiting for their handlers (a `reject` ended the run before its audit
# and its reply) replay as they ran.
HANDLERS_FINISHED_PATCH = "allocations-handlers-finished"


@workflow.defn(name="ReconcileAllocations", failure_exception_types=[ValidationError])
class ReconcileAllocations:
    def __init__(self) -> None:
        self._state: AllocationsCarry | None = None

    # ------------------------------------------------------------------ messages

    @workflow.query(name="progress")
    def progress(self) -> AllocationsProgress | None:
        s = self._state
        if s is None:
            return None
        phase = Phase.APPLYING if s.applying and s.phase != Phase.DONE else s.phase
        return AllocationsProgress(run_id=s.context.run_id, mode=s.context.mode, phase=phase,
                                   counts=s.counts, paused=s.paused)

    @workflow.update(name="approve")
    async def approve(self, decision: ApprovalDecision) -> ApprovalResult:
        return await self._decide(decision, approved=True)

    @workflow.update(name="reject")
    async def reject(self, decision: ApprovalDecision) -> ApprovalResult:
        return await self._decide(decision, approved=False)

    @approve.validator
    def _validate_approve(self, decision: ApprovalDecision) -> None:
        self._validate_decision()

    @reject.validator
    def _validate_reject(self, decision: ApprovalDecision) -> None:
        self._validate_decision()

    def _validate_decision(self) -> None:
        s = self._state
        if s is None or s.phase != Phase.AWAITING_APPROVAL:
            raise ApplicationError(f"run is not awaiting approval (phase: {s.phase.value if s else 'starting'})")
        if s.decision is not None:
            raise ApplicationError(f"run was already {'approved' if s.approved else 'rejected'} by {s.decision.actor}")

    async def _decide(self, decision: ApprovalDecision, approved: bool) -> ApprovalResult:
        s = self._state
        assert s is not None
        s.decision, s.approved = decision, approved
        await self._audit(decision.actor, AuditAction.RUN_APPROVE if approved else AuditAction.RUN_REJECT,
                          decision.reason)
        return ApprovalResult(run_id=s.context.run_id, accepted=True, approved=approved)

    async def _audit(self, actor: str, action: AuditAction, reason: str | None) -> None:
        s = self._state
        assert s is not None
        await workflow.execute_activity_method(
            AllocationActivities.audit_decision,
            AuditDecisionInput(context=s.context, actor=actor, action=action, reason=reason), **STEP)

    # ------------------------------------------------------------------ main

    @workflow.run
    async def run(self, inp: ReconcileAllocationsInput) -> AllocationsResult:
        try:
            return await self._run(inp)
        except ActivityError as e:
            raise permanent_failure(e, "AllocationsReconcileFailed") from e

    async def _run(self, inp: ReconcileAllocationsInput) -> AllocationsResult:
        info = workflow.info()
        if inp.carried is not None:
            self._state = inp.carried
        else:
            as_of = (inp.as_of or workflow.now()).replace(microsecond=0)
            ctx = await workflow.execute_activity_method(
                AllocationActivities.start,
                StartInput(run_id=info.workflow_id, workflow_run_id=info.run_id, request=inp, as_of=as_of), **STEP)
            self._state = AllocationsCarry(context=ctx)
        s = self._state

        if s.phase in (Phase.ALLOCATIONS, Phase.PAYMENTS):
            await self._pages(inp, s)
            if s.context.mode == Mode.PLAN and not s.applying:
                s.phase = Phase.AWAITING_APPROVAL if s.counts.fixable else Phase.DONE

        if s.phase == Phase.AWAITING_APPROVAL:
            try:
                await workflow.wait_condition(lambda: s.decision is not None,
                                              timeout=timedelta(seconds=inp.approval_timeout_seconds))
            except TimeoutError:
                pass
            if not s.approved:
                s.phase = Phase.DONE
                await self._handlers_finished()
                return self._result(s, RunOutcome.REJECTED)
            s.applying, s.phase, s.cursor = True, Phase.ALLOCATIONS, None
            await self._pages(inp, s)

        s.phase = Phase.DONE
        await self._handlers_finished()
        return self._result(s, RunOutcome.OBSERVE_ONLY if s.paused else RunOutcome.COMPLETED)

    async def _pages(self, inp: ReconcileAllocationsInput, s: AllocationsCarry) -> None:
        ctx = s.context.model_copy(update={"mode": Mode.APPLY}) if s.applying else s.context
        while s.phase in (Phase.ALLOCATIONS, Phase.PAYMENTS):
            page = await workflow.execute_activity_method(
                AllocationActivities.page,
                PageInput(context=ctx, phase=s.phase, cursor=s.cursor, page_size=inp.page_size,
                          apply_planned_only=s.applying), **PAGE)
            if s.applying:
                s.applied_counts = s.applied_counts.add(page.counts)
            else:
                s.counts = s.counts.add(page.counts)
            s.sample = (s.sample + page.sample)[:MAX_SAMPLE]
            s.paused = s.paused or page.paused
            s.cursor = page.next_cursor
            if s.cursor is None:
                s.phase = NEXT_PHASE[s.phase]
            if s.phase != Phase.DONE and workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(inp.model_copy(update={"carried": s}))
        if s.applying:
            s.phase = Phase.DONE

    async def _handlers_finished(self) -> None:
        """A decision (or a message) that came at the end is audited and answered before the run
        ends: the `reject` that ends a plan's run first of all."""
        if workflow.patched(HANDLERS_FINISHED_PATCH):
            await workflow.wait_condition(workflow.all_handlers_finished)

    @staticmethod
    def _result(s: AllocationsCarry, outcome: RunOutcome) -> AllocationsResult:
        ctx = s.context
        return AllocationsResult(
            run_id=ctx.run_id, mode=ctx.mode, outcome=outcome, customer=ctx.customer_id, actor=ctx.actor,
            as_of=ctx.as_of, counts=s.counts, applied=s.applied_counts if s.applying else None, findings=s.sample,
            paused=s.paused, decided_by=s.decision.actor if s.decision else None)
