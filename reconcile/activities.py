"""Usage reconciliation activities: the Temporal-facing class.

A page activity reads a batch of customers (reconcile/store.py, one snapshot) and Stripe's
summaries, plans it with the pure `plan_batch` (reconcile/scan.py), records the findings, and
hands the approved ones to the correction writer (reconcile/corrections.py). What a page may
write (`WriteMode`) comes in with its input: decided once, by the workflow.
Run bookkeeping lives in reconcile/runs.py; the methods here only expose it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg
import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from autoheal import switch
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway
from common.audit import AuditInput, write_audit
from common.failures import permanent_in_group
from common.heartbeat import Heartbeater, resume
from reconcile import periods_store, runs, store
from reconcile.corrections import CorrectionWriter
from reconcile.plans import Finding
from reconcile.runs import is_data_error
from reconcile.scan import Customer, ScanPolicy, Summaries, invalid_usage, plan_batch, tally
from reconcile.types import (
    ApplyPlanInput,
    Counts,
    DiscrepancyStatus,
    FinishRunInput,
    FinishRunResult,
    PageCheckpoint,
    PageInput,
    PageResult,
    Permanent,
    RunContext,
    RunStatusUpdate,
    StartRunInput,
    WriteMode,
)

# Customers handled between two checkpoints (and so redone at most after a crash). Each batch
# ends with a phase where Stripe is idle (its corrections, then the next batch's SQL reads), so
# small batches cost wall time: at 1M events / 10k customers, 50 -> 250 took the apply run from
# 60 s to 48 s (bench/reconcile, docs/PERFORMANCE.md). A crash redoes at most 250 customers'
# reads: 20 s at Stripe's test-mode 25 ops/s.
SUB_BATCH = 250

log = logging.getLogger(__name__)


def _leaf(e: BaseException) -> str:
    """`Type: message` of an error, or of the first one of a TaskGroup's group."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


class UsageActivities:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway, settings: Settings) -> None:
        self.pool = pool
        self.stripe = stripe
        self.settings = settings
        self.writer = CorrectionWriter(pool, stripe, settings.recon_stripe_concurrency)

    # ------------------------------------------------------------------ run bookkeeping

    @activity.defn(name="usage.start_run")
    async def start_run(self, inp: StartRunInput) -> RunContext:
        return await runs.start_run(self.pool, self.stripe, self.settings, inp)

    @activity.defn(name="usage.set_run_status")
    async def set_run_status(self, inp: RunStatusUpdate) -> None:
        await runs.set_run_status(self.pool, inp, self.settings)

    @activity.defn(name="usage.finish_run")
    async def finish_run(self, inp: FinishRunInput) -> FinishRunResult:
        return await runs.finish_run(self.pool, inp, self.settings)

    @activity.defn(name="usage.audit")
    async def audit(self, inp: AuditInput) -> None:
        async with self.pool.acquire() as conn:
            await write_audit(conn, inp)

    # ------------------------------------------------------------------ the page scan

    @activity.defn(name="usage.reconcile_page")
    async def reconcile_page(self, inp: PageInput) -> PageResult:
        ctx = inp.context
        # After a retry: resume after the last finished batch.
        checkpoint = resume(PageCheckpoint, PageCheckpoint())
        start_cursor = checkpoint.done_through or inp.cursor
        already = checkpoint.counts.customers_scanned  # finished by an earlier attempt

        async with self.pool.acquire() as conn:
            customers = await store.customers_page(
                conn, after=start_cursor, limit=ctx.policy.page_size - already,
                only=ctx.customers, verify_run=ctx.run_id if inp.verify else None,
                range_after=ctx.customers_after, range_through=ctx.customers_through)
        counts = checkpoint.counts
        async with Heartbeater(checkpoint) as hb:
            for i in range(0, len(customers), SUB_BATCH):
                batch = customers[i : i + SUB_BATCH]
                counts = counts.add(await self._reconcile_isolating(ctx, batch, inp))
                hb.record(PageCheckpoint(done_through=batch[-1].customer_id, counts=counts))
        done = already + len(customers)
        last = customers[-1].customer_id if customers else start_cursor
        # A full page means there may be more, even when an earlier attempt had already done
        # this page's last batch (then nothing was left to read here).
        next_cursor = last if done >= ctx.policy.page_size else None
        return PageResult(next_cursor=next_cursor, counts=counts)

    async def _reconcile_isolating(self, ctx: RunContext, batch: list[Customer], inp: PageInput) -> Counts:
        """A batch, and when it fails on a deterministic data error that the per-key checks did
        not catch, its customers one by one: a customer whose data fails is reported as
        `invalid_usage` (meter "*") and skipped, so one customer never fails a page for the
        others (or retries it forever). If every customer of a batch of several fails, it is
        not one customer's data: the page fails non-retryably with the first error."""
        try:
            return await self._reconcile_batch(ctx, batch, inp)
        except Exception as e:
            if not is_data_error(e):
                raise
            log.warning("batch after %s failed on its data (%s: %s); retrying customer by customer",
                        inp.cursor, type(e).__name__, e)
        counts = Counts()
        failed: list[Finding] = []
        prefix = "verify|" if inp.verify else ""
        for c in batch:
            try:
                counts = counts.add(await self._reconcile_batch(ctx, [c], inp))
            except Exception as e:
                if not is_data_error(e):
                    raise
                failed.append(invalid_usage(
                    f"{prefix}usage|{c.customer_id}|*|data", c.customer_id, c.stripe_customer_id, "*", None,
                    f"reconciling this customer failed on its data, it is skipped: {_leaf(e)}"))
        if len(batch) > 1 and len(failed) == len(batch):
            raise ApplicationError(f"every customer of a batch failed on its data; first: {failed[0].detail}",
                                   type=Permanent.INVALID_DATA, non_retryable=True)
        await store.record_findings(self.pool, ctx.run_id, failed)
        return counts.add(tally(failed)).add(Counts(customers_scanned=len(failed)))

    async def _reconcile_batch(self, ctx: RunContext, batch: list[Customer], inp: PageInput) -> Counts:
        applying = inp.write_mode == WriteMode.APPLY
        now = datetime.now(UTC)
        counts = Counts()
        if applying:
            await self._hold_if_paused()
            await self.writer.flush_planned([c.customer_id for c in batch], now, counts)

        rows = await store.read_batch(self.pool, ctx, batch, await self._tiered_prices(batch))
        read_at = datetime.now(UTC)
        summaries = await self._read_summaries(ctx, batch)
        plan = plan_batch(rows, summaries, ScanPolicy.for_page(ctx, inp.write_mode, verify=inp.verify, now=now))
        if applying and plan.confirm:
            await self.writer.confirm(plan.confirm)
        await store.record_findings(self.pool, ctx.run_id, plan.findings)
        counts = counts.add(plan.counts)
        if applying:
            approved = [f for f in plan.findings if f.status == DiscrepancyStatus.APPROVED]
            counts = counts.add(await self.writer.apply_all(ctx, approved, stripe_read_at=read_at))
        return counts

    async def _tiered_prices(self, batch: list[Customer]) -> dict[str, dict]:
        """Tiered prices the subscription mirror holds without their tiers, read from Stripe
        (tiers expanded) so closed periods can be priced; rare: a retrieve expands them."""
        async with self.pool.acquire() as conn:
            ids = await periods_store.prices_missing_tiers(conn, [c.customer_id for c in batch])
        out = {}
        for price_id in ids:
            price = await self.stripe.retrieve("price", price_id)
            if price is not None:
                out[price_id] = price
        return out

    async def _read_summaries(self, ctx: RunContext, batch: list[Customer]) -> Summaries:
        """Stripe's daily values per (customer, meter), and the pairs Stripe refused to read
        (e.g. a deleted or mis-mapped customer): those are reported, never retried forever."""
        sem = asyncio.Semaphore(self.settings.recon_stripe_concurrency)
        out = Summaries()

        async def one(c: Customer, meter_id: str, meter: str) -> None:
            assert c.stripe_customer_id is not None
            async with sem:
                try:
                    out.values[(c.customer_id, meter)] = await self.stripe.daily_summaries(
                        meter_id, c.stripe_customer_id, ctx.window_start, ctx.window_end, lane=ctx.budget_lane)
                except stripe.InvalidRequestError as e:
                    out.unreadable[(c.customer_id, meter)] = (
                        f"Stripe refused the summary read: {e.user_message or e}")

        try:
            async with asyncio.TaskGroup() as tg:
                for c in batch:
                    if c.stripe_customer_id:
                        for m in ctx.meters:
                            tg.create_task(one(c, m.stripe_meter_id, m.event_name))
        except BaseExceptionGroup as group:
            # A refusal no retry fixes (Stripe refused the API key) fails the page for good.
            if (permanent := permanent_in_group(group)) is not None:
                raise permanent from group
            raise
        return out

    # ------------------------------------------------------------------ applying a stored plan

    @activity.defn(name="usage.apply_plan_page")
    async def apply_plan_page(self, inp: ApplyPlanInput) -> PageResult:
        """Execute the stored plan of a run (proposed/held findings), one page of them."""
        ctx = inp.context
        checkpoint = resume(PageCheckpoint, PageCheckpoint())
        counts = checkpoint.counts
        findings, next_cursor = await store.awaiting_approval(
            self.pool, ctx.run_id, after=checkpoint.done_through or inp.cursor,
            limit=ctx.policy.page_size)
        async with Heartbeater(checkpoint) as hb:
            for i in range(0, len(findings), SUB_BATCH):
                batch = findings[i : i + SUB_BATCH]
                if not inp.observe_only:  # paused: the plan stays as it is
                    await self._hold_if_paused()
                    counts = counts.add(await self.writer.apply_all(ctx, batch))
                hb.record(PageCheckpoint(done_through=batch[-1].key, counts=counts))
        return PageResult(next_cursor=next_cursor, counts=counts)

    async def _hold_if_paused(self) -> None:
        """The safety net behind the pause signal (which a run started a moment before the pause
        may miss): no corrective batch starts while auto-healing is paused. The activity fails
        retryably and resumes from its heartbeat checkpoint once `resume` clears the switch."""
        if await switch.paused(self.pool):
            raise ApplicationError("auto-healing is paused (billing-recon resume)", type="AutohealPaused")
