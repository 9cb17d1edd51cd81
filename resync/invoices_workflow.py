"""ResyncInvoices: the invoice mirror (`billing.invoices`) compared with Stripe and fixed, audited
(`invoice.resync`). What webhooks missed (a voided invoice still `open` here, a payment never
recorded, a deleted draft) is found and, in apply mode, fixed.

1. Page through Stripe's invoices of every status (one customer or all; optionally only those
   created in the last `days` days); compare each with its mirror row through the webhook
   handler's mapping and fix it through the handler's write. Pages run in activities that
   heartbeat Stripe's cursor; the workflow passes only that cursor and continues-as-new when
   Temporal suggests it.
2. Mirror rows Stripe never listed: a draft Stripe no longer has was deleted there (marked
   `deleted`); anything else is reported `missing_in_stripe`, never deleted.

A workflow of its own rather than a phase of ResyncSubscriptions: invoices grow every period
(far more rows than subscriptions, so their own cadence and window) and a new phase would change
ResyncSubscriptions' recorded histories and result. RevenueReconciliation fixes the invoices it
finds with this job's fix (resync/mirror.py `fix_row`, `write_invoice`).

While auto-healing is paused an apply run is observe-only (each page checks before writing)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from common.paged_run import PAGE, PagedRun

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import PagedRunContext
    from resync.invoice_activities import InvoiceResyncActivities
    from resync.types import (
        InvoiceLocalPageInput,
        InvoicePageResult,
        InvoiceResyncCarry,
        InvoiceResyncPhase,
        InvoiceResyncProgress,
        InvoiceResyncResult,
        ResyncInvoicesInput,
        ResyncPageInput,
    )

LOCAL_PAGE_LIMIT = 500


@workflow.defn(name="ResyncInvoices", failure_exception_types=[ValidationError])
class ResyncInvoices(PagedRun[ResyncInvoicesInput, InvoiceResyncCarry, InvoiceResyncResult]):
    FAILURE_TYPE = "ResyncFailed"
    DEFAULT_REASON = "invoice resync from Stripe"
    NEXT_PHASE = {InvoiceResyncPhase.STRIPE: InvoiceResyncPhase.LOCAL,
                  InvoiceResyncPhase.LOCAL: InvoiceResyncPhase.DONE}

    @workflow.query(name="progress")
    def progress(self) -> InvoiceResyncProgress | None:
        s = self._state
        if s is None:
            return None
        return InvoiceResyncProgress(run_id=s.context.run_id, mode=s.context.mode, phase=s.phase,
                                     pages_done=s.pages_done, counts=s.counts, paused=s.paused)

    @workflow.run
    async def run(self, inp: ResyncInvoicesInput) -> InvoiceResyncResult:
        return await self.run_pages(inp)

    def new_state(self, inp: ResyncInvoicesInput, ctx: PagedRunContext) -> InvoiceResyncCarry:
        since = workflow.now() - timedelta(days=inp.days) if inp.days is not None else None
        return InvoiceResyncCarry(context=ctx, days=inp.days, created_gte=int(since.timestamp()) if since else None)

    async def step(self, inp: ResyncInvoicesInput, s: InvoiceResyncCarry) -> bool:
        ctx = s.context
        page: InvoicePageResult
        if s.phase == InvoiceResyncPhase.STRIPE:
            page = await workflow.execute_activity_method(
                InvoiceResyncActivities.invoices_page,
                ResyncPageInput(context=ctx, starting_after=s.cursor, created_gte=s.created_gte,
                                 page_size=inp.page_size, max_pages=inp.pages_per_activity),
                **PAGE)
        else:
            page = await workflow.execute_activity_method(
                InvoiceResyncActivities.invoices_local_page,
                InvoiceLocalPageInput(context=ctx, after=s.cursor, created_gte=s.created_gte, limit=LOCAL_PAGE_LIMIT),
                **PAGE)
        s.counts = s.counts.add(page.counts)
        s.findings = s.findings.merge(page.findings)
        s.paused = s.paused or page.paused
        s.pages_done += page.pages
        s.cursor = page.next_cursor
        return s.cursor is None

    def result(self, s: InvoiceResyncCarry) -> InvoiceResyncResult:
        ctx = s.context
        return InvoiceResyncResult(run_id=ctx.run_id, mode=ctx.mode, customer=ctx.scope.customer_id, actor=ctx.actor,
                                   days=s.days, counts=s.counts, findings=s.findings, paused=s.paused)
