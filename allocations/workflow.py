"""ReconcileAllocations: duration usage (allocations, usage records, ledger debits, usage events
for Stripe, payment credits) reconciled and repaired, as a durable workflow.

Deterministic orchestration only. Phases: `allocations` pages (by customer/allocation cursor)
-> `payments` pages (drift candidates, by customer/session cursor) -> in plan mode: wait for an
`approve`/`reject` update, then `applying` (the same pages again in apply mode, fixing only the
approved findings, each re-checked) -> done. The whole state is one model (`AllocationsCarry`),
cursors only, continue-as-new when Temporal suggests it.

Pause-aware: while auto-healing is paused, or this run is (its `pause` signal, which
AutoHealControl also broadcasts), the pages are observe-only and the run says so. A `pause`
cancels the page that may be writing: it stops after the entity in hand, and the phase goes on
observe-only from there; `resume` lets the next pages write again."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

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
        PageResult,
        Phase,
        ReconcileAllocationsInput,
        RunOutcome,
        StartInput,
    )
    from common import ui
    from common.audit import AuditAction
    from common.paged import ErrorType
    from common.types import Mode, PauseRequest

# Activity options from the shared kit (common/options.py): an unknown customer never retries.
STEP = short_step(ErrorType.UNKNOWN_CUSTOMER.value)
PAGE = heartbeat_page(ErrorType.UNKNOWN_CUSTOMER.value)
# A cancelled page (a pause) is awaited until it has stopped and said how far it got.
WAIT_FOR_CANCEL = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
NEXT_PHASE = {Phase.ALLOCATIONS: Phase.PAYMENTS, Phase.PAYMENTS: Phase.DONE}
# Runs that ended without waiting for their handlers (a `reject` ended the run before its audit
# and its reply) replay as they ran.
HANDLERS_FINISHED_PATCH = "allocations-handlers-finished"
# Runs started before the pause/resume signals existed ignored them (no handler): so do they
# when replayed.
RUN_PAUSE_PATCH = "allocations-run-pause"


@workflow.defn(name="ReconcileAllocations", failure_exception_types=[ValidationError])
class ReconcileAllocations:
    def __init__(self) -> None:
        self._state: AllocationsCarry | None = None
        self._paused = False  # this run's own pause (signals); the global switch is read by the pages
        # The page in flight that may write; a pause cancels it (see `pause`).
        self._writing_page: workflow.ActivityHandle[PageResult] | None = None
        self._cancelled_page = False

    # ------------------------------------------------------------------ messages

    @workflow.query(name="progress")
    def progress(self) -> AllocationsProgress | None:
        s = self._state
        if s is None:
            return None
        phase = Phase.APPLYING if s.applying and s.phase != Phase.DONE else s.phase
        return AllocationsProgress(run_id=s.context.run_id, mode=s.context.mode, phase=phase,
                                   counts=s.counts, paused=s.paused or self._paused)

    @workflow.signal(name="pause")
    async def pause(self, req: PauseRequest) -> None:
        """Observe-only from now on: the page that may be writing is cancelled (it finishes the
        entity in hand and stops, within about a heartbeat) and the next pages only report."""
        if not workflow.patched(RUN_PAUSE_PATCH):
            return
        self._paused = True
        if self._writing_page is not None:
            self._writing_page.cancel()
            self._cancelled_page = True
        await self._audit(req.actor, AuditAction.RUN_PAUSE, req.reason, unique=True)

    @workflow.signal(name="resume")
    async def resume(self, req: PauseRequest) -> None:
        """The next pages write again (what was observed while paused is fixed by the next run)."""
        if not workflow.patched(RUN_PAUSE_PATCH):
            return
        self._paused = False
        await self._audit(req.actor, AuditAction.RUN_RESUME, req.reason, unique=True)

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

    async def _audit(self, actor: str, action: AuditAction, reason: str | None, *, unique: bool = False) -> None:
        """A decision is made once (keyed by the run); a pause or resume may come many times."""
        s = self._state
        if s is None:  # a signal before the run has started: audited with what is known so far
            await workflow.wait_condition(lambda: self._state is not None)
            s = self._state
            assert s is not None
        key = f"{s.context.run_id}|{action}|{workflow.uuid4()}" if unique else None
        await workflow.execute_activity_method(
            AllocationActivities.audit_decision,
            AuditDecisionInput(context=s.context, actor=actor, action=action, reason=reason, key=key), **STEP)

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
            self._paused = self._paused or inp.carried.run_paused
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
            ui.set_outcome(ui.Outcome.AWAITING_APPROVAL)
            try:
                await workflow.wait_condition(lambda: s.decision is not None,
                                              timeout=timedelta(seconds=inp.approval_timeout_seconds))
            except TimeoutError:
                pass
            ui.set_outcome(ui.Outcome.RUNNING)
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
            page = workflow.start_activity_method(
                AllocationActivities.page,
                PageInput(context=ctx, phase=s.phase, cursor=s.cursor, page_size=inp.page_size,
                          apply_planned_only=s.applying, run_paused=self._paused),
                cancellation_type=WAIT_FOR_CANCEL, **PAGE)
            res = await (self._writing(page) if ctx.mode == Mode.APPLY and not self._paused else page)
            if res is None:
                continue
            if s.applying:
                s.applied_counts = s.applied_counts.add(res.counts)
            else:
                s.counts = s.counts.add(res.counts)
            s.sample = (s.sample + res.sample)[:MAX_SAMPLE]
            s.paused = s.paused or res.paused
            s.cursor = res.next_cursor
            if res.interrupted:
                s.paused = s.paused or self._paused  # the rest of the phase goes on observe-only
            elif s.cursor is None:
                s.phase = NEXT_PHASE[s.phase]
            if s.phase != Phase.DONE and workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                s.run_paused = self._paused
                workflow.continue_as_new(inp.model_copy(update={"carried": s}))
        if s.applying:
            s.phase = Phase.DONE

    async def _writing(self, page: workflow.ActivityHandle[PageResult]) -> PageResult | None:
        """Await a page that may write. A `pause` meanwhile cancels it: it returns what it did,
        `interrupted`, or None when it did not get to say so (cancelled before it started): the
        same page then runs again, observe-only."""
        self._writing_page, self._cancelled_page = page, False
        try:
            return await page
        except ActivityError as e:
            if self._cancelled_page and isinstance(e.cause, CancelledError):
                return None
            raise
        finally:
            self._writing_page = None

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
