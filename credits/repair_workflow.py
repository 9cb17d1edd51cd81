"""RepairCredits: every completed credit purchase has exactly one grant, and every balance equals
its ledger; plus the runbooks' ledger consistency checks.

Phases (each a loop of page activities passing a cursor; continue-as-new when suggested):
1. `stripe_events`: Stripe's checkout events within retention -> missing grants (granted in
   apply mode through the webhook handler's `grant_credits`).
2. `inbox`: the same for the webhook inbox (any age).
3. `duplicates`: sessions with more than one ledger row (reported, never removed).
4. `balances`: credit_balances vs the ledger's sum per customer (repaired in apply mode).
5. `invoices`: paid invoices in Stripe without a local record (reported).
6. `usage`: usage in a closed billing period never pushed to Stripe (reported).

While auto-healing is paused an apply run is observe-only (checked before each batch)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from common.failures import permanent_failure
from common.options import heartbeat_page, report_query, short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import MAX_SAMPLE, PERMANENT_ERRORS, CleanupInput, ContextInput
    from credits.activities import CreditActivities
    from credits.types import (
        BalancePageInput,
        CheckoutPageInput,
        CheckoutSource,
        CreditPageResult,
        DuplicatesInput,
        InvoiceCheckInput,
        RepairCarry,
        RepairCreditsInput,
        RepairPhase,
        RepairProgress,
        RepairResult,
        UsageCheckInput,
    )
    from resync.activities import ResyncActivities

BALANCE_PAGE_LIMIT = 500
DEFAULT_REASON = "credit repair"
STEP = short_step(*PERMANENT_ERRORS)
PAGE = heartbeat_page(*PERMANENT_ERRORS)
QUERY = report_query(*PERMANENT_ERRORS)

NEXT_PHASE = {
    RepairPhase.STRIPE_EVENTS: RepairPhase.INBOX,
    RepairPhase.INBOX: RepairPhase.DUPLICATES,
    RepairPhase.DUPLICATES: RepairPhase.BALANCES,
    RepairPhase.BALANCES: RepairPhase.INVOICES,
    RepairPhase.INVOICES: RepairPhase.USAGE,
    RepairPhase.USAGE: RepairPhase.DONE,
}


@workflow.defn(name="RepairCredits", failure_exception_types=[ValidationError])
class RepairCredits:
    def __init__(self) -> None:
        self._state: RepairCarry | None = None

    @workflow.query(name="progress")
    def progress(self) -> RepairProgress | None:
        s = self._state
        if s is None:
            return None
        return RepairProgress(run_id=s.context.run_id, mode=s.context.mode, phase=s.phase, counts=s.counts,
                              paused=s.paused)

    @workflow.run
    async def run(self, inp: RepairCreditsInput) -> RepairResult:
        try:
            return await self._run(inp)
        except ActivityError as e:
            raise permanent_failure(e, "RepairFailed") from e

    async def _run(self, inp: RepairCreditsInput) -> RepairResult:
        info = workflow.info()
        if inp.carried is not None:
            self._state = inp.carried
        else:
            ctx = await workflow.execute_activity_method(
                ResyncActivities.start,
                ContextInput(run_id=info.workflow_id, workflow_run_id=info.run_id, customer=inp.customer,
                             mode=inp.mode, actor=inp.actor, reason=inp.reason or DEFAULT_REASON),
                **STEP)
            now = workflow.now()
            self._state = RepairCarry(context=ctx, since_ts=int((now - timedelta(days=inp.days)).timestamp()),
                                      until_ts=int(now.timestamp()) + 1)
        s = self._state
        ctx = s.context

        while s.phase != RepairPhase.DONE:
            done = await self._step(inp, s)
            if done:
                s.phase = NEXT_PHASE[s.phase]
                s.cursor = None
            await self._maybe_continue_as_new(inp)

        await workflow.execute_activity_method(
            ResyncActivities.cleanup, CleanupInput(run_id=ctx.run_id),
            **STEP)
        # Purchases still without a grant: all of them unless this run granted them.
        s.checks.checkouts_without_ledger_entry = s.counts.missing_grants - s.counts.grants_made
        s.checks.checkout_sample = s.findings.missing_grants[:MAX_SAMPLE] \
            if s.checks.checkouts_without_ledger_entry else []
        return RepairResult(run_id=ctx.run_id, mode=ctx.mode, customer=ctx.scope.customer_id, actor=ctx.actor,
                            counts=s.counts, checks=s.checks, findings=s.findings, paused=s.paused)

    async def _step(self, inp: RepairCreditsInput, s: RepairCarry) -> bool:
        """One activity of the current phase; True when the phase is finished."""
        ctx = s.context
        if s.phase in (RepairPhase.STRIPE_EVENTS, RepairPhase.INBOX):
            source = CheckoutSource.STRIPE if s.phase == RepairPhase.STRIPE_EVENTS else CheckoutSource.INBOX
            page = await workflow.execute_activity_method(
                CreditActivities.checkout_page,
                CheckoutPageInput(context=ctx, source=source, cursor=s.cursor, since_ts=s.since_ts,
                                  until_ts=s.until_ts, page_size=inp.page_size, max_pages=inp.pages_per_activity),
                **PAGE)
            self._add(s, page)
            s.cursor = page.next_cursor
            return s.cursor is None
        if s.phase == RepairPhase.DUPLICATES:
            page = await workflow.execute_activity_method(
                CreditActivities.duplicates, DuplicatesInput(context=ctx),
                **QUERY)
            self._add(s, page)
            return True
        if s.phase == RepairPhase.BALANCES:
            page = await workflow.execute_activity_method(
                CreditActivities.balances_page, BalancePageInput(context=ctx, after=s.cursor, limit=BALANCE_PAGE_LIMIT),
                **PAGE)
            self._add(s, page)
            s.cursor = page.next_cursor
            return s.cursor is None
        if s.phase == RepairPhase.INVOICES:
            inv = await workflow.execute_activity_method(
                CreditActivities.paid_invoices_page,
                InvoiceCheckInput(context=ctx, starting_after=s.cursor, page_size=inp.page_size,
                                  max_pages=inp.pages_per_activity),
                **PAGE)
            s.checks.paid_invoices_checked += inv.checked
            s.checks.paid_invoices_missing_locally += inv.missing
            s.checks.invoice_sample = (s.checks.invoice_sample + inv.sample)[:MAX_SAMPLE]
            s.cursor = inv.next_cursor
            return s.cursor is None
        usage = await workflow.execute_activity_method(
            CreditActivities.unpushed_usage,
            UsageCheckInput(context=ctx, today_iso=workflow.now().date().isoformat()),
            **QUERY)
        s.checks.unpushed_usage_keys = usage.keys
        s.checks.usage_sample = usage.sample
        return True

    @staticmethod
    def _add(s: RepairCarry, page: CreditPageResult) -> None:
        s.counts = s.counts.add(page.counts)
        s.findings = s.findings.merge(page.findings)
        s.paused = s.paused or page.paused

    async def _maybe_continue_as_new(self, inp: RepairCreditsInput) -> None:
        if not workflow.info().is_continue_as_new_suggested():
            return
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp.model_copy(update={"carried": self._state}))
