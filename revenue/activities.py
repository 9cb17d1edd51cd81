"""RevenueReconciliation's activities (Stripe + Postgres).

`list_page`: pages of one of Stripe's listings (invoices, invoice payments, refunds, balance
transactions) saved as the run's scratch rows, heartbeating Stripe's cursor.
`compare_day`: one UTC day, its invoices in keyset batches (heartbeated cursor): both sides
recorded as first seen, classified (revenue/rules.py), findings stored, and in apply mode fixed
through the invoice resync's own fix (resync/mirror.py `fix_row`, audited
`revenue.invoice_resync`) and refunds recorded once by their Stripe id (`revenue.record_refund`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from temporalio import activity

from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import StripeObjectError, invoice_row
from common.audit import AuditAction, write_audit
from common.heartbeat import Heartbeater, heartbeat_pages, resume
from common.paged import PagedRunContext
from common.paged_activities import may_write
from resync.invoice_activities import INVOICES, write_invoice
from resync.mirror import fix_row
from resync.types import MirrorCounts
from revenue import store
from revenue.rules import Finding, Side, StripeSide, classify, paid_on
from revenue.types import (
    LISTED_KIND,
    DayCheckpoint,
    DayInput,
    DayResult,
    FindingStatus,
    FinishInput,
    ListCheckpoint,
    ListPageInput,
    ListPageResult,
    RevenueCounts,
    RunInput,
    day_bounds,
)
from webhooks.handlers import lock_object, read_time

# The invoice resync's mirror fix, audited under this job's action and key.
REVENUE_INVOICES = dataclasses.replace(
    INVOICES, create_action=AuditAction.REVENUE_INVOICE_RESYNC, update_action=AuditAction.REVENUE_INVOICE_RESYNC,
    audit_kind="revenue-invoice")


def refund_audit_key(refund_id: str) -> str:
    """A refund is recorded once ever (its row's key is the refund id): so is its audit row."""
    return f"revenue-refund:{refund_id}"


class RevenueActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway) -> None:
        self.pool = pool
        self.stripe = stripe_gateway

    @activity.defn(name="revenue.start_run")
    async def start_run(self, inp: RunInput) -> None:
        async with self.pool.acquire() as conn:
            await store.start_run(conn, inp.context, inp.since, inp.until)

    @activity.defn(name="revenue.finish_run")
    async def finish_run(self, inp: FinishInput) -> None:
        async with self.pool.acquire() as conn:
            await store.finish_run(conn, inp.context.run_id, inp.counts, inp.observe_only, inp.error)

    @activity.defn(name="revenue.list_page")
    async def list_page(self, inp: ListPageInput) -> ListPageResult:
        """Up to `max_pages` pages of one listing from the cursor, saved as scratch rows."""
        kind = LISTED_KIND[inp.listing]
        cp = resume(ListCheckpoint, ListCheckpoint(starting_after=inp.starting_after))

        async def one_page() -> bool:
            async with self.pool.acquire() as conn:
                listed_at = await read_time(conn)  # Postgres' clock, as the mirror's synced_at
            objects, has_more = await self.stripe.list_created_page(
                kind, created_gte=inp.created_gte, created_lt=inp.created_lt, starting_after=cp.starting_after,
                limit=inp.page_size)
            if objects:
                async with self.pool.acquire() as conn:
                    await store.save_objects(conn, inp.context.run_id, kind, objects, listed_at)
                cp.starting_after = objects[-1]["id"]
                cp.listed += len(objects)
            cp.pages += 1
            return has_more and bool(objects)

        done = await heartbeat_pages(cp, one_page, max_pages=inp.max_pages - cp.pages)
        return ListPageResult(next_cursor=None if done else cp.starting_after, pages=cp.pages, listed=cp.listed)

    @activity.defn(name="revenue.compare_day")
    async def compare_day(self, inp: DayInput) -> DayResult:
        """One UTC day: every invoice with something on it, on either side, compared (and fixed
        in apply mode), in batches; then the day's totals."""
        ctx = inp.context
        cp = resume(DayCheckpoint, DayCheckpoint())
        async with Heartbeater(cp) as hb:
            while True:
                async with self.pool.acquire() as conn:
                    ids = await store.day_candidates(conn, ctx.run_id, inp.day, cp.done_through, inp.batch)
                if not ids:
                    break
                await self._read_missing(ctx.run_id, ids)
                await self._compare_batch(inp, ids, cp)
                cp.done_through = ids[-1]
                hb.record(cp)
        async with self.pool.acquire() as conn:
            await store.write_day_totals(conn, ctx.run_id, inp.day)
            await store.count_day(conn, ctx.run_id, inp.day, cp.counts)
        cp.counts.days = 1
        return DayResult(counts=cp.counts, paused=cp.paused)

    async def _read_missing(self, run_id: str, ids: list[str]) -> None:
        """Invoices of the day the listing did not return (created before the lookback), read
        one by one; one Stripe does not have stays absent (missing in Stripe)."""
        async with self.pool.acquire() as conn:
            missing = await store.missing_stripe_invoices(conn, run_id, ids)
        for iid in missing:
            async with self.pool.acquire() as conn:
                listed_at = await read_time(conn)
            inv = await self.stripe.retrieve("invoice", iid)
            if inv is not None:
                async with self.pool.acquire() as conn:
                    await store.save_objects(conn, run_id, "invoice", [inv], listed_at)

    async def _compare_batch(self, inp: DayInput, ids: list[str], cp: DayCheckpoint) -> None:
        ctx, d = inp.context, inp.day
        start, end = day_bounds(d)
        c = cp.counts
        async with self.pool.acquire() as conn:
            sides = await store.read_sides(conn, ctx.run_id, ids, d, inp.since, inp.until)
            facts = []
            for iid in ids:
                local, stripe = sides.local.get(iid), sides.stripe.get(iid)
                currency = _currency(local, stripe)
                s_paid = paid_on(stripe, start, end)
                facts.append((iid, currency or "", local.status if local else None, paid_on(local, start, end),
                               sides.local_refunded_d.get(iid, 0), stripe.status if stripe else None, s_paid,
                               sides.stripe_refunded_d.get(iid, 0), sides.payments_d.get(iid, 0),
                               max(s_paid - sides.payments_d.get(iid, 0), 0)))
            await store.record_facts(conn, ctx.run_id, d, facts)
            write, paused = await may_write(conn, ctx)
        cp.paused = cp.paused or paused
        for iid in ids:
            local, stripe = sides.local.get(iid), sides.stripe.get(iid)
            c.invoices_compared += 1
            found = classify(local, stripe)
            if not found:
                continue
            values = _finding_values(iid, sides, local, stripe)
            async with self.pool.acquire() as conn:
                for f in found:
                    status = FindingStatus.OBSERVED if f.fixable else FindingStatus.UNFIXABLE
                    await store.record_finding(conn, ctx.run_id, iid, f.kind.value, d, values, status, f.detail)
            if write:
                await self._fix(ctx, iid, [f for f in found if f.fixable], sides, c)

    async def _fix(self, ctx: PagedRunContext, iid: str, fixable: list[Finding], sides: store.Sides,
                   c: RevenueCounts) -> None:
        """The mirror row from Stripe's copy (the invoice resync's fix) and the refunds Stripe has
        and the mirror does not; the findings become applied (or failed)."""
        if not fixable:
            return
        raw = sides.stripe_raw[iid]
        mirror = MirrorCounts()
        try:
            row = invoice_row(raw)
        except StripeObjectError:
            mirror.fix_failures += 1
        else:
            async with self.pool.acquire() as conn:
                await fix_row(conn, ctx, REVENUE_INVOICES, raw, row, sides.listed_at[iid], mirror, write_invoice)
                for r in sides.stripe_refunds.get(iid, []):
                    c.refunds_recorded += await _record_refund(conn, ctx, iid, r, sides.customer.get(iid))
        async with self.pool.acquire() as conn:
            await store.set_finding_status(conn, ctx.run_id, iid, [f.kind.value for f in fixable],
                                           FindingStatus.FAILED if mirror.fix_failures else FindingStatus.APPLIED)


async def _record_refund(conn: asyncpg.Connection, ctx: PagedRunContext, invoice_id: str, r: asyncpg.Record,
                         customer_id: str | None) -> bool:
    """One of Stripe's refunds of the invoice in billing.invoice_refunds, audited; once ever."""
    async with conn.transaction():
        await lock_object(conn, invoice_id)
        inserted = await conn.fetchval(
            """
            INSERT INTO billing.invoice_refunds
                (stripe_refund_id, stripe_invoice_id, stripe_charge_id, amount, currency, status, refunded_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (stripe_refund_id) DO NOTHING RETURNING true
            """, r["refund_id"], invoice_id, r["charge_id"], r["amount"], r["currency"], store.REFUND_OK, r["at"])
        if not inserted:
            return False
        await write_audit(conn, ctx.audit_entry(
            AuditAction.REVENUE_RECORD_REFUND, entity_type="invoice", entity_id=invoice_id, before=None,
            after={"refund": r["refund_id"], "charge": r["charge_id"], "amount": r["amount"],
                   "currency": r["currency"], "refunded_at": r["at"].isoformat()},
            idempotency_key=refund_audit_key(r["refund_id"]), customer_id=customer_id))
        return True


def _finding_values(iid: str, sides: store.Sides, local: Side | None, stripe: StripeSide | None) -> dict[str, Any]:
    return {
        "stripe_customer_id": sides.stripe_customer.get(iid), "customer_id": sides.customer.get(iid),
        "currency": _currency(local, stripe),
        "local_status": local.status if local else None, "stripe_status": stripe.status if stripe else None,
        "local_amount_paid": local.amount_paid if local else None,
        "stripe_amount_paid": stripe.amount_paid if stripe else None,
        "local_refunded": local.refunded if local else None, "stripe_refunded": stripe.refunded if stripe else None,
    }


def _currency(local: Side | None, stripe: StripeSide | None) -> str | None:
    side = stripe or local
    return side.currency if side is not None else None
