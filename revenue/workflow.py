"""RevenueReconciliation: per UTC day, the invoices paid in the mirror (`billing.invoices`, and
its refunds `billing.invoice_refunds`) against Stripe: invoices by `status_transitions.paid_at`,
invoice payments, refunds and balance transactions. The rule and the findings:
docs/revenue.md (revenue/rules.py).

1. Four listings of Stripe (each a phase of pages, the activity heartbeating Stripe's cursor):
   invoices and invoice payments created since `since - lookback_days`, refunds and balance
   transactions created in the range. They are saved as the run's scratch rows, never carried
   in the workflow.
2. Each day of the range: its invoices (either side) compared, findings stored, fixed in apply
   mode (the invoice resync's mirror fix, audited), then the day's totals.

While auto-healing is paused an apply run is observe-only (each batch checks before writing)
and its run row says so. The run's row is `billing.reconciliation_runs` kind `revenue`."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from common.paged_run import PAGE, STEP, PagedRun

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import PagedRunContext
    from revenue.activities import RevenueActivities
    from revenue.types import (
        INVALID_WINDOW,
        DayInput,
        FinishInput,
        Listing,
        ListPageInput,
        RevenueCarry,
        RevenueInput,
        RevenueProgress,
        RevenueResult,
        RunInput,
        day_bounds,
    )


@workflow.defn(name="RevenueReconciliation", failure_exception_types=[ValidationError])
class RevenueReconciliation(PagedRun[RevenueInput, RevenueCarry, RevenueResult]):
    FAILURE_TYPE = "RevenueReconciliationFailed"
    DEFAULT_REASON = "revenue reconciliation: invoice mirror resync from Stripe"
    NEXT_PHASE = {Listing.INVOICES: Listing.PAYMENTS, Listing.PAYMENTS: Listing.REFUNDS,
                  Listing.REFUNDS: Listing.BALANCE, Listing.BALANCE: Listing.COMPARE,
                  Listing.COMPARE: Listing.DONE}

    @workflow.query(name="progress")
    def progress(self) -> RevenueProgress | None:
        s = self._state
        if s is None:
            return None
        total = (s.until - s.since).days + 1
        done = total if s.phase == Listing.DONE else (s.day - s.since).days if s.day else 0
        return RevenueProgress(run_id=s.context.run_id, mode=s.context.mode.value, phase=s.phase, day=s.day,
                               days_total=total, days_done=done, pages_done=s.pages_done, counts=s.counts,
                               paused=s.paused)

    @workflow.run
    async def run(self, inp: RevenueInput) -> RevenueResult:
        if inp.carried is None:
            try:  # before anything is started or written
                inp.window(workflow.now().date())
            except ValueError as e:
                raise ApplicationError(str(e), type=INVALID_WINDOW, non_retryable=True) from None
        try:
            return await self.run_pages(inp)
        except ApplicationError as e:
            if self._state is not None:
                await self._finish(self._state, error=e.message)
            raise

    def new_state(self, inp: RevenueInput, ctx: PagedRunContext) -> RevenueCarry:
        since, until = inp.window(workflow.now().date())
        return RevenueCarry(context=ctx, phase=Listing.INVOICES, since=since, until=until,
                            lookback_days=inp.lookback_days)

    async def started(self, inp: RevenueInput, s: RevenueCarry) -> None:
        await workflow.execute_activity_method(
            RevenueActivities.start_run, RunInput(context=s.context, since=s.since, until=s.until), **STEP)

    async def step(self, inp: RevenueInput, s: RevenueCarry) -> bool:
        if s.phase == Listing.COMPARE:
            return await self._compare_next_day(s)
        range_start, range_end = day_bounds(s.since)[0], day_bounds(s.until)[1]
        # Invoices and payments paid in the range may have been created before it.
        if s.phase in (Listing.INVOICES, Listing.PAYMENTS):
            range_start -= timedelta(days=s.lookback_days)
        page = await workflow.execute_activity_method(
            RevenueActivities.list_page,
            ListPageInput(context=s.context, listing=s.phase, created_gte=int(range_start.timestamp()),
                          created_lt=int(range_end.timestamp()), starting_after=s.cursor,
                          page_size=inp.page_size, max_pages=inp.pages_per_activity),
            **PAGE)
        s.pages_done += page.pages
        s.counts.stripe_objects += page.listed
        s.cursor = page.next_cursor
        return s.cursor is None

    async def _compare_next_day(self, s: RevenueCarry) -> bool:
        day = s.day or s.since
        result = await workflow.execute_activity_method(
            RevenueActivities.compare_day, DayInput(context=s.context, day=day, since=s.since, until=s.until),
            **PAGE)
        s.counts = s.counts.add(result.counts)
        s.paused = s.paused or result.paused
        s.day = day + timedelta(days=1)
        return s.day > s.until

    async def finishing(self, inp: RevenueInput, s: RevenueCarry) -> None:
        await self._finish(s)

    async def _finish(self, s: RevenueCarry, error: str | None = None) -> None:
        await workflow.execute_activity_method(
            RevenueActivities.finish_run,
            FinishInput(context=s.context, counts=s.counts, observe_only=s.paused, error=error), **STEP)

    def result(self, s: RevenueCarry) -> RevenueResult:
        ctx = s.context
        return RevenueResult(run_id=ctx.run_id, mode=ctx.mode.value, since=s.since, until=s.until, actor=ctx.actor,
                             counts=s.counts, paused=s.paused)
