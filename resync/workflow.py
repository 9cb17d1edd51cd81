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

from common.paged_run import PAGE, STEP, PagedRun

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import MAX_SAMPLE, ContextInput, PagedRunContext
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


@workflow.defn(name="ResyncSubscriptions", failure_exception_types=[ValidationError])
class ResyncSubscriptions(PagedRun[ResyncSubscriptionsInput, ResyncCarry, ResyncResult]):
    FAILURE_TYPE = "ResyncFailed"
    DEFAULT_REASON = "resync from Stripe"
    NEXT_PHASE = {ResyncPhase.STRIPE: ResyncPhase.LOCAL, ResyncPhase.LOCAL: ResyncPhase.DONE}

    @workflow.query(name="progress")
    def progress(self) -> ResyncProgress | None:
        s = self._state
        if s is None:
            return None
        return ResyncProgress(run_id=s.context.run_id, mode=s.context.mode, phase=s.phase,
                              pages_done=s.pages_done, counts=s.counts, paused=s.paused)

    @workflow.run
    async def run(self, inp: ResyncSubscriptionsInput) -> ResyncResult:
        return await self.run_pages(inp)

    def context_input(self, inp: ResyncSubscriptionsInput) -> ContextInput:
        return super().context_input(inp).model_copy(update={"manual": inp.manual})

    def new_state(self, inp: ResyncSubscriptionsInput, ctx: PagedRunContext) -> ResyncCarry:
        return ResyncCarry(context=ctx)

    async def started(self, inp: ResyncSubscriptionsInput, s: ResyncCarry) -> None:
        s.counts.active_local_before = await self._count_active(s)

    async def step(self, inp: ResyncSubscriptionsInput, s: ResyncCarry) -> bool:
        ctx = s.context
        if s.phase == ResyncPhase.STRIPE:
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
            return s.cursor is None
        local = await workflow.execute_activity_method(
            ResyncActivities.local_page, LocalPageInput(context=ctx, after=s.cursor, limit=LOCAL_PAGE_LIMIT),
            **PAGE)
        s.counts.missing_in_stripe += local.missing_in_stripe
        s.findings.missing_in_stripe = (s.findings.missing_in_stripe + local.sample)[:MAX_SAMPLE]
        s.cursor = local.next_cursor
        return s.cursor is None

    async def finishing(self, inp: ResyncSubscriptionsInput, s: ResyncCarry) -> None:
        s.counts.active_local_after = await self._count_active(s)

    def result(self, s: ResyncCarry) -> ResyncResult:
        ctx, c = s.context, s.counts
        return ResyncResult(
            run_id=ctx.run_id, mode=ctx.mode, customer=ctx.scope.customer_id, actor=ctx.actor, counts=c,
            findings=s.findings, paused=s.paused,
            count_check=CountCheck(active_local_before=c.active_local_before,
                                   active_local_after=c.active_local_after, active_stripe=c.active_stripe,
                                   matches=c.active_local_after == c.active_stripe))

    async def _count_active(self, s: ResyncCarry) -> int:
        counted = await workflow.execute_activity_method(
            ResyncActivities.count_active, CountActiveInput(scope=s.context.scope), **STEP)
        return counted.active
