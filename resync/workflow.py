"""ResyncSubscriptions: the runbook's "sync subscriptions from Stripe" as a durable workflow.

1. Page through every Stripe subscription (every status, canceled included), for one customer or
   all; compare each with `billing.subscriptions` and, in apply mode, fix it (one audit row per
   fix, with before and after). Pages run in activities that heartbeat Stripe's cursor; the
   workflow passes only that cursor and continues-as-new when Temporal suggests it.
2. Report local rows Stripe never listed (never deleted).
3. The runbook's count comparison: active here (before and after) vs active in Stripe.

While auto-healing is paused an apply run is observe-only (each page checks before writing),
except a manual sync (`billing-recon subscriptions sync`), which is an operator's explicit act."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

from common.failures import permanent_failure
from common.options import heartbeat_page, short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import MAX_SAMPLE, PERMANENT_ERRORS, CleanupInput, ContextInput
    from resync.activities import ResyncActivities
    from resync.types import (
        CountActiveInput,
        CountCheck,
        LocalPageInput,
        ResyncCarry,
        ResyncPageInput,
        ResyncPhase,
        ResyncProgress,
        ResyncResult,
        ResyncSubscriptionsInput,
    )

LOCAL_PAGE_LIMIT = 500
DEFAULT_REASON = "resync from Stripe"
STEP = short_step(*PERMANENT_ERRORS)
PAGE = heartbeat_page(*PERMANENT_ERRORS)


@workflow.defn(name="ResyncSubscriptions", failure_exception_types=[ValidationError])
class ResyncSubscriptions:
    def __init__(self) -> None:
        self._state: ResyncCarry | None = None

    @workflow.query(name="progress")
    def progress(self) -> ResyncProgress | None:
        s = self._state
        if s is None:
            return None
        return ResyncProgress(run_id=s.context.run_id, mode=s.context.mode, phase=s.phase,
                              pages_done=s.pages_done, counts=s.counts, paused=s.paused)

    @workflow.run
    async def run(self, inp: ResyncSubscriptionsInput) -> ResyncResult:
        try:
            return await self._run(inp)
        except ActivityError as e:
            raise permanent_failure(e, "ResyncFailed") from e

    async def _run(self, inp: ResyncSubscriptionsInput) -> ResyncResult:
        info = workflow.info()
        if inp.carried is not None:
            self._state = inp.carried
        else:
            ctx = await workflow.execute_activity_method(
                ResyncActivities.start,
                ContextInput(run_id=info.workflow_id, workflow_run_id=info.run_id, customer=inp.customer,
                             mode=inp.mode, actor=inp.actor, reason=inp.reason or DEFAULT_REASON,
                             manual=inp.manual),
                **STEP)
            self._state = ResyncCarry(context=ctx)
            before = await workflow.execute_activity_method(
                ResyncActivities.count_active, CountActiveInput(scope=ctx.scope),
                **STEP)
            self._state.counts.active_local_before = before.active
        s = self._state
        ctx = s.context

        while s.phase == ResyncPhase.STRIPE:
            page = await workflow.execute_activity_method(
                ResyncActivities.subscriptions_page,
                ResyncPageInput(context=ctx, starting_after=s.cursor, page_size=inp.page_size,
                                max_pages=inp.pages_per_activity),
                **PAGE)
            s.counts = s.counts.add(page.counts)
            s.findings = s.findings.merge(page.findings)
            s.paused = s.paused or page.paused
            s.pages_done += page.pages
            s.cursor = page.next_cursor
            if s.cursor is None:
                s.phase = ResyncPhase.LOCAL
            await self._maybe_continue_as_new(inp)

        while s.phase == ResyncPhase.LOCAL:
            local = await workflow.execute_activity_method(
                ResyncActivities.local_page,
                LocalPageInput(context=ctx, after=s.cursor, limit=LOCAL_PAGE_LIMIT),
                **PAGE)
            s.counts.missing_in_stripe += local.missing_in_stripe
            s.findings.missing_in_stripe = (s.findings.missing_in_stripe + local.sample)[:MAX_SAMPLE]
            s.cursor = local.next_cursor
            if s.cursor is None:
                s.phase = ResyncPhase.DONE
            await self._maybe_continue_as_new(inp)

        after = await workflow.execute_activity_method(
            ResyncActivities.count_active, CountActiveInput(scope=ctx.scope),
            **STEP)
        s.counts.active_local_after = after.active
        await workflow.execute_activity_method(
            ResyncActivities.cleanup, CleanupInput(run_id=ctx.run_id),
            **STEP)
        c = s.counts
        return ResyncResult(
            run_id=ctx.run_id, mode=ctx.mode, customer=ctx.scope.customer_id, actor=ctx.actor, counts=c,
            findings=s.findings, paused=s.paused,
            count_check=CountCheck(active_local_before=c.active_local_before,
                                   active_local_after=c.active_local_after, active_stripe=c.active_stripe,
                                   matches=c.active_local_after == c.active_stripe))

    async def _maybe_continue_as_new(self, inp: ResyncSubscriptionsInput) -> None:
        if not workflow.info().is_continue_as_new_suggested():
            return
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp.model_copy(update={"carried": self._state}))
