"""ReconcileUsage: the daily usage reconciliation runbook as a durable workflow.

Deterministic orchestration only. The workflow passes cursors (never lists of customers) to
page activities, keeps its whole state in one model (`ReconcileCarry`) and continues-as-new
when Temporal suggests it, so a run over 100k customers stays far from history limits.

Phases: scan pages -> (plan mode, or held over-reporting: wait for approve/reject) -> apply the
stored plan -> settle (durable timer) -> verify the keys this run touched -> done.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from common.failures import failure_message, permanent_failure
from common.options import heartbeat_page, short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common import ui
    from common.audit import AuditAction, AuditInput
    from common.types import Mode, PauseRequest, RunStatus
    from health.deadman import ping_after_run
    from reconcile.activities import UsageActivities
    from reconcile.details import progress_details
    from reconcile.types import (
        ApplyPlanInput,
        ApprovalDecision,
        ApprovalResult,
        Counts,
        FinishRunInput,
        FinishRunResult,
        PageInput,
        PageResult,
        Permanent,
        Phase,
        ReconcileCarry,
        ReconcileProgress,
        ReconcileResult,
        ReconcileUsageInput,
        RunStatusUpdate,
        StartRunInput,
        WriteMode,
        page_write_mode,
    )

# What start_run refuses for good (bad input): never retried, whatever raises it. Activity
# options come from the shared kit (common/options.py).
PERMANENT = (Permanent.INVALID_WINDOW, Permanent.UNKNOWN_CUSTOMER, Permanent.UNKNOWN_METER,
             Permanent.UNSUPPORTED_METER)
# A cancelled page is awaited until it has really stopped writing.
WAIT_FOR_CANCEL = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
# The audit rows' idempotency keys keep the names approvals had before the dotted vocabulary
# (common/audit.py), so a key is the same whichever build wrote it.
AUDIT_KEY_NAMES = {AuditAction.RUN_APPROVE: "approve_plan", AuditAction.RUN_REJECT: "reject_plan"}


# Malformed input (e.g. JSON from `temporal workflow start` with end_date before start_date)
# fails the workflow with the validation message instead of wedging its first task.
@workflow.defn(name="ReconcileUsage", failure_exception_types=[ValidationError])
class ReconcileUsage:
    def __init__(self) -> None:
        self._state: ReconcileCarry | None = None
        self._paused = False
        # The page activity in flight that may write; a pause cancels it (see `pause`).
        self._corrective_page: workflow.ActivityHandle | None = None

    # ------------------------------------------------------------------ messages

    @workflow.query(name="progress")
    def progress(self) -> ReconcileProgress | None:
        s = self._state
        if s is None:
            return None
        return ReconcileProgress(
            run_id=s.context.run_id, mode=s.context.mode, phase=s.phase, paused=self._paused,
            pages_done=s.pages_done, customers_scanned=s.counts.customers_scanned,
            cursor=s.cursor, counts=s.counts)

    @workflow.signal(name="pause")
    async def pause(self, req: PauseRequest) -> None:
        self._paused = True
        # Stop corrective writes now, not at the end of the page: the page activity is
        # cancelled (it sees it at its next heartbeat, within seconds) and scanned again
        # observe-only. Safe at any instant: every write is recorded in the outbox first.
        if self._corrective_page is not None:
            self._corrective_page.cancel()
        await self._audit(req.actor, AuditAction.RUN_PAUSE, req.reason)

    @workflow.signal(name="resume")
    async def resume(self, req: PauseRequest) -> None:
        self._paused = False
        await self._audit(req.actor, AuditAction.RUN_RESUME, req.reason)

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
            phase = s.phase.value if s else "starting"
            raise ApplicationError(f"run is not awaiting approval (phase: {phase})")
        if s.decision is not None:
            raise ApplicationError(f"run was already {'approved' if s.approved else 'rejected'} by {s.decision.actor}")

    async def _decide(self, decision: ApprovalDecision, approved: bool) -> ApprovalResult:
        assert self._state is not None
        self._state.decision = decision
        self._state.approved = approved
        await self._audit(decision.actor, AuditAction.RUN_APPROVE if approved else AuditAction.RUN_REJECT,
                          decision.reason)
        status = RunStatus.APPLYING if approved else RunStatus.REJECTED
        return ApprovalResult(run_id=self._state.context.run_id, accepted=True, status=status)

    async def _audit(self, actor: str, action: AuditAction, reason: str | None) -> None:
        info = workflow.info()
        key_name = AUDIT_KEY_NAMES.get(action, action.value)
        await workflow.execute_activity_method(
            UsageActivities.audit,
            AuditInput(actor=actor, action=action, entity_type="reconciliation_run",
                       entity_id=info.workflow_id, reason=reason, workflow_id=info.workflow_id,
                       run_id=info.run_id,
                       idempotency_key=f"{info.workflow_id}|{key_name}|{workflow.uuid4()}"),
            **short_step(*PERMANENT))

    # ------------------------------------------------------------------ main

    @workflow.run
    async def run(self, inp: ReconcileUsageInput) -> ReconcileResult:
        try:
            return await self._run(inp)
        except ActivityError as e:
            if self._state is not None:
                await self._finish(RunStatus.FAILED, error=failure_message(e))
            await ping_after_run(failed=True)
            raise permanent_failure(e, "ReconciliationFailed") from e

    async def _run(self, inp: ReconcileUsageInput) -> ReconcileResult:
        info = workflow.info()
        if inp.carried is not None:
            self._state = inp.carried
            self._paused = inp.carried.paused
        else:
            ctx = await workflow.execute_activity_method(
                UsageActivities.start_run,
                StartRunInput(run_id=info.workflow_id, workflow_run_id=info.run_id, request=inp,
                              today=workflow.now().date()),
                **short_step(*PERMANENT))
            self._state = ReconcileCarry(context=ctx)
            # Started while auto-healing is paused: observe-only until `resume` arrives (the
            # AutoHealControl workflow signals every running run).
            self._paused = self._paused or ctx.globally_paused
        s = self._state
        ctx = s.context
        self._show_progress()

        if s.phase == Phase.SCANNING:
            await self._page_loop(inp, verify=False)
            while s.paused_scan and workflow.patched("rescan-after-pause"):
                if self._paused and ctx.globally_paused:
                    # Started while auto-healing was paused and still paused: an observe-only
                    # run. It detected and reported; the next run corrects.
                    s.observe_only = True
                    return await self._finish(RunStatus.COMPLETED)
                # Paused mid-run: what was scanned observe-only is scanned again, correctively,
                # once resumed. Keys already corrected show no drift the second time.
                await workflow.wait_condition(lambda: not self._paused)
                s.paused_scan, s.cursor, s.counts, s.pages_done = False, None, Counts(), 0
                await self._page_loop(inp, verify=False)
            s.phase = self._after_scan()
            s.cursor = None

        if s.phase == Phase.AWAITING_APPROVAL:
            await self._set_status(RunStatus.AWAITING_APPROVAL)
            ui.set_outcome(ui.Outcome.AWAITING_APPROVAL)
            self._show_progress()
            decided = await self._wait(lambda: s.decision is not None,
                                       timedelta(seconds=inp.approval_timeout_seconds))
            ui.set_outcome(ui.Outcome.RUNNING)
            # An update accepted in the same activation as the timeout still counts.
            decided = decided or s.decision is not None
            approved = decided and bool(s.approved)
            # Leave the phase before awaiting anything: a late approve must be refused.
            s.phase = Phase.APPLYING if approved else Phase.DONE
            decided_by = s.decision.actor if s.decision else "approval-timeout"
            reason = s.decision.reason if s.decision else "approval timed out"
            if approved:
                await self._set_status(RunStatus.APPLYING, approved_by=decided_by, reason=reason)
            elif ctx.mode == Mode.PLAN:
                await self._set_status(RunStatus.REJECTED, rejected_by=decided_by, reason=reason,
                                       reject_held=True)
                return await self._finish(RunStatus.REJECTED)
            else:
                # An apply run: only the held corrections are dropped; everything else it did
                # is still settled and verified, and the run completes.
                await self._set_status(RunStatus.RUNNING, rejected_by=decided_by, reason=reason,
                                       reject_held=True)
                s.phase = Phase.SETTLING if self._should_verify() else Phase.DONE

        if s.phase == Phase.APPLYING:
            # Corrective writes stop while paused; the plan waits for `resume`.
            while True:
                await workflow.wait_condition(lambda: not self._paused)
                res = await self._corrective(workflow.start_activity_method(
                    UsageActivities.apply_plan_page,
                    ApplyPlanInput(context=self._approved_context(), cursor=s.cursor),
                    cancellation_type=WAIT_FOR_CANCEL, **heartbeat_page(*PERMANENT)))
                if res is None:
                    continue  # paused mid-page: the rest of this page waits for `resume`
                s.counts = s.counts.add(res.counts)
                s.cursor = res.next_cursor
                if s.cursor is None:
                    break
                await self._maybe_continue_as_new(inp)
            s.phase = Phase.SETTLING if self._should_verify() else Phase.DONE

        if s.phase == Phase.SETTLING:
            await workflow.sleep(timedelta(seconds=ctx.policy.settle_seconds))
            s.phase = Phase.VERIFYING
            s.cursor = None
            self._show_progress()

        if s.phase == Phase.VERIFYING:
            await self._set_status(RunStatus.VERIFYING)
            await self._page_loop(inp, verify=True)
            s.phase = Phase.DONE

        return await self._finish(RunStatus.COMPLETED)

    async def _page_loop(self, inp: ReconcileUsageInput, verify: bool) -> None:
        s = self._state
        assert s is not None
        while True:
            write_mode = page_write_mode(s.context.mode, paused=self._paused, verify=verify)
            observe_only = write_mode == WriteMode.OBSERVE
            page = workflow.start_activity_method(
                UsageActivities.reconcile_page,
                PageInput(context=s.context, cursor=s.cursor, write_mode=write_mode, verify=verify),
                cancellation_type=WAIT_FOR_CANCEL, **heartbeat_page(*PERMANENT))
            res = await (page if observe_only else self._corrective(page))
            if res is None:
                continue  # paused mid-page: scan the same page again, observe-only
            if not verify and observe_only and s.context.mode != Mode.DRY_RUN:
                s.paused_scan = True  # observe-only because paused: not corrected
            if verify:
                s.verify_counts = (s.verify_counts or Counts()).add(res.counts)
            else:
                s.counts = s.counts.add(res.counts)
            s.pages_done += 1
            s.cursor = res.next_cursor
            self._show_progress()
            if s.cursor is None:
                return
            await self._maybe_continue_as_new(inp)

    async def _corrective(self, page: workflow.ActivityHandle[PageResult]) -> PageResult | None:
        """Await a page that may write; None if a pause cancelled it."""
        self._corrective_page = page
        try:
            return await page
        except ActivityError as e:
            if self._paused and isinstance(e.cause, CancelledError):
                return None
            raise
        finally:
            self._corrective_page = None

    def _after_scan(self) -> Phase:
        s = self._state
        assert s is not None
        # A plan's proposals, or an apply run's held over-reporting, wait for a decision.
        if s.context.mode != Mode.DRY_RUN and s.counts.held_for_approval > 0:
            return Phase.AWAITING_APPROVAL
        return Phase.SETTLING if self._should_verify() else Phase.DONE

    def _should_verify(self) -> bool:
        s = self._state
        assert s is not None
        if s.context.mode == Mode.DRY_RUN or not s.context.verify_after_settle:
            return False
        c = s.counts
        if (c.corrections_pushed + c.corrections_cancelled + c.pending) > 0:
            return True
        # Corrections found stale at apply time are re-planned by the verify pass right away
        # (it re-scans the customers of `stale` findings), not only by the next run.
        return c.stale_skipped > 0 and workflow.patched("verify-stale-corrections")

    def _approved_context(self):
        s = self._state
        assert s is not None
        if s.decision is None:
            return s.context
        return s.context.model_copy(update={"actor": s.decision.actor})

    async def _wait(self, condition, limit: timedelta) -> bool:
        try:
            await workflow.wait_condition(condition, timeout=limit)
            return True
        except TimeoutError:
            return False

    async def _maybe_continue_as_new(self, inp: ReconcileUsageInput) -> None:
        if not workflow.info().is_continue_as_new_suggested():
            return
        s = self._state
        assert s is not None
        await workflow.wait_condition(workflow.all_handlers_finished)
        s.paused = self._paused
        workflow.continue_as_new(inp.model_copy(update={"carried": s}))

    async def _set_status(self, status: RunStatus, approved_by: str | None = None,
                          rejected_by: str | None = None, reason: str | None = None,
                          reject_held: bool = False) -> None:
        assert self._state is not None
        await workflow.execute_activity_method(
            UsageActivities.set_run_status,
            RunStatusUpdate(run_id=self._state.context.run_id, status=status, approved_by=approved_by,
                            rejected_by=rejected_by, reason=reason, reject_held=reject_held),
            **short_step(*PERMANENT))

    async def _finish(self, status: RunStatus, error: str | None = None) -> ReconcileResult:
        s = self._state
        assert s is not None
        s.phase = Phase.DONE
        await workflow.wait_condition(workflow.all_handlers_finished)
        recorded: FinishRunResult | None = await workflow.execute_activity_method(
            UsageActivities.finish_run,
            FinishRunInput(context=s.context, status=status, counts=s.counts,
                           verify_counts=s.verify_counts, error=error, observe_only=s.observe_only),
            **short_step(*PERMANENT))
        if recorded is not None:  # None: a finish_run from before counts came from records
            # The writes of a page attempt killed mid-way are in the records, not in the tally.
            s.counts, s.verify_counts = recorded.counts, recorded.verify_counts
        result = ReconcileResult(
            run_id=s.context.run_id, status=status, mode=s.context.mode,
            window_start=s.context.window_start, window_end=s.context.window_end,
            counts=s.counts, verify_counts=s.verify_counts, finished_at=workflow.now(),
            observe_only=s.observe_only, warnings=s.context.warnings())
        if status == RunStatus.COMPLETED and not s.observe_only:
            await ping_after_run(failed=False)
        return result

    def _show_progress(self) -> None:
        assert self._state is not None
        ui.show_progress(progress_details(self._state, paused=self._paused))
