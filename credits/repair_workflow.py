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

from common.paged_run import PAGE, QUERY, PagedRun

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import MAX_SAMPLE, PagedRunContext
    from credits.activities import CreditActivities
    from credits.checks import LedgerCheckActivities
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

BALANCE_PAGE_LIMIT = 500


@workflow.defn(name="RepairCredits", failure_exception_types=[ValidationError])
class RepairCredits(PagedRun[RepairCreditsInput, RepairCarry, RepairResult]):
    FAILURE_TYPE = "RepairFailed"
    DEFAULT_REASON = "credit repair"
    NEXT_PHASE = {
        RepairPhase.STRIPE_EVENTS: RepairPhase.INBOX,
        RepairPhase.INBOX: RepairPhase.DUPLICATES,
        RepairPhase.DUPLICATES: RepairPhase.BALANCES,
        RepairPhase.BALANCES: RepairPhase.INVOICES,
        RepairPhase.INVOICES: RepairPhase.USAGE,
        RepairPhase.USAGE: RepairPhase.DONE,
    }

    @workflow.query(name="progress")
    def progress(self) -> RepairProgress | None:
        s = self._state
        if s is None:
            return None
        return RepairProgress(run_id=s.context.run_id, mode=s.context.mode, phase=s.phase, counts=s.counts,
                              paused=s.paused)

    @workflow.run
    async def run(self, inp: RepairCreditsInput) -> RepairResult:
        return await self.run_pages(inp)

    def new_state(self, inp: RepairCreditsInput, ctx: PagedRunContext) -> RepairCarry:
        now = workflow.now()
        return RepairCarry(context=ctx, since_ts=int((now - timedelta(days=inp.days)).timestamp()),
                           until_ts=int(now.timestamp()) + 1)

    async def step(self, inp: RepairCreditsInput, s: RepairCarry) -> bool:
        ctx = s.context
        if s.phase in (RepairPhase.STRIPE_EVENTS, RepairPhase.INBOX):
            source = CheckoutSource.STRIPE if s.phase == RepairPhase.STRIPE_EVENTS else CheckoutSource.INBOX
            page = await workflow.execute_activity_method(
                CreditActivities.checkout_page,
                CheckoutPageInput(context=ctx, source=source, cursor=s.cursor, since_ts=s.since_ts,
                                  until_ts=s.until_ts, page_size=inp.page_size, max_pages=inp.pages_per_activity),
                **PAGE)
            return self._add(s, page)
        if s.phase == RepairPhase.DUPLICATES:
            page = await workflow.execute_activity_method(
                LedgerCheckActivities.duplicates, DuplicatesInput(context=ctx), **QUERY)
            return self._add(s, page)
        if s.phase == RepairPhase.BALANCES:
            page = await workflow.execute_activity_method(
                LedgerCheckActivities.balances_page, BalancePageInput(context=ctx, after=s.cursor, limit=BALANCE_PAGE_LIMIT),
                **PAGE)
            return self._add(s, page)
        if s.phase == RepairPhase.INVOICES:
            inv = await workflow.execute_activity_method(
                LedgerCheckActivities.paid_invoices_page,
                InvoiceCheckInput(context=ctx, starting_after=s.cursor, page_size=inp.page_size,
                                  max_pages=inp.pages_per_activity),
                **PAGE)
            s.checks.paid_invoices_checked += inv.checked
            s.checks.paid_invoices_missing_locally += inv.missing
            s.checks.invoice_sample = (s.checks.invoice_sample + inv.sample)[:MAX_SAMPLE]
            s.cursor = inv.next_cursor
            return s.cursor is None
        usage = await workflow.execute_activity_method(
            LedgerCheckActivities.unpushed_usage,
            UsageCheckInput(context=ctx, today_iso=workflow.now().date().isoformat()), **QUERY)
        s.checks.unpushed_usage_keys = usage.keys
        s.checks.usage_sample = usage.sample
        return True

    def result(self, s: RepairCarry) -> RepairResult:
        # Purchases still without a grant: all of them unless this run granted them.
        s.checks.checkouts_without_ledger_entry = s.counts.missing_grants - s.counts.grants_made
        s.checks.checkout_sample = s.findings.missing_grants[:MAX_SAMPLE] \
            if s.checks.checkouts_without_ledger_entry else []
        ctx = s.context
        return RepairResult(run_id=ctx.run_id, mode=ctx.mode, customer=ctx.scope.customer_id, actor=ctx.actor,
                            counts=s.counts, checks=s.checks, findings=s.findings, paused=s.paused)

    @staticmethod
    def _add(s: RepairCarry, page: CreditPageResult) -> bool:
        """Add a page's counts and findings; True when its phase is finished."""
        s.counts = s.counts.add(page.counts)
        s.findings = s.findings.merge(page.findings)
        s.paused = s.paused or page.paused
        s.cursor = page.next_cursor
        return s.cursor is None
