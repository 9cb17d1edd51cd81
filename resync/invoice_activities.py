"""ResyncInvoices' activities (Stripe + Postgres): Stripe's invoices vs the mirror
`billing.invoices`, through the webhook handler's own mapping (`invoice_row(...).compared()`)
and its own write (`upsert_invoice`, which never writes a copy read earlier than the stored one).
The paging, comparison, fix and audit are the mirror resync's (resync/mirror.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio import activity

from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import INVOICE_DELETED, InvoiceRow, invoice_row
from common.audit import AuditAction, write_audit
from common.heartbeat import Heartbeater, resume
from common.paged import PagedRunContext, run_write_key, sample
from common.paged_activities import may_write
from resync.mirror import MirrorSpec, compare_listing, compare_page, mirror_rows, page_result
from resync.types import (
    InvoiceLocalCheckpoint,
    InvoiceLocalPageInput,
    InvoicePageResult,
    InvoiceResyncCheckpoint,
    ResyncPageInput,
)
from webhooks.handlers import lock_object, read_time, upsert_invoice

DRAFT = "draft"

INVOICES = MirrorSpec(
    kind="invoice", table="billing.invoices", key="stripe_invoice_id", fields=InvoiceRow.COMPARED,
    to_row=invoice_row, create_action=AuditAction.INVOICE_RESYNC, update_action=AuditAction.INVOICE_RESYNC,
    audit_kind="invoice-resync")


async def _customer_of(conn: asyncpg.Connection, stripe_customer_id: str) -> str | None:
    return await conn.fetchval(
        "SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1", stripe_customer_id)


class InvoiceResyncActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway) -> None:
        self.pool = pool
        self.stripe = stripe_gateway

    @activity.defn(name="resync.invoices_page")
    async def invoices_page(self, inp: ResyncPageInput) -> InvoicePageResult:
        """Up to `max_pages` pages of Stripe's invoices (every status; created since
        `created_gte` when given) from the cursor: compare each with its mirror row and, in apply
        mode, fix it. Heartbeats the cursor after every page and resumes from it."""
        cp = resume(InvoiceResyncCheckpoint, InvoiceResyncCheckpoint(starting_after=inp.starting_after))
        ctx = inp.context

        async def list_page(after: str | None) -> tuple[list[dict], bool]:
            return await self.stripe.list_invoices_page(
                status=None, customer=ctx.scope.stripe_customer_id, starting_after=after, limit=inp.page_size,
                created_gte=inp.created_gte)

        async def compare(invoices: list[dict[str, Any]], listed_at: datetime) -> None:
            await compare_page(self.pool, ctx, INVOICES, invoices, mirror_rows(INVOICES, invoices), listed_at, cp,
                               write_invoice)

        done = await compare_listing(self.pool, cp, list_page, compare, inp.max_pages)
        return page_result(InvoicePageResult, cp, done)

    @activity.defn(name="resync.invoices_local_page")
    async def invoices_local_page(self, inp: InvoiceLocalPageInput) -> InvoicePageResult:
        """Mirror rows in scope that Stripe's listing never returned (deleted drafts aside), each
        confirmed with a read. A draft Stripe no longer has was deleted there: it is marked
        deleted (apply, audited). Any other is reported `missing_in_stripe`, never deleted."""
        ctx = inp.context
        cp = resume(InvoiceLocalCheckpoint, InvoiceLocalCheckpoint(done_through=inp.after))
        c, f = cp.counts, cp.findings
        since = datetime.fromtimestamp(inp.created_gte, tz=UTC) if inp.created_gte is not None else None
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT i.stripe_invoice_id, i.status FROM billing.invoices i
                WHERE ($1::text IS NULL OR i.stripe_invoice_id > $1)
                  AND i.status IS DISTINCT FROM $2
                  AND NOT EXISTS (SELECT 1 FROM billing.run_seen r WHERE r.run_id = $3 AND r.kind = $4
                                  AND r.key = i.stripe_invoice_id)
                  AND ($5::text IS NULL OR i.stripe_customer_id = $5)
                  AND ($6::timestamptz IS NULL OR i.stripe_created >= $6)
                ORDER BY i.stripe_invoice_id LIMIT $7
                """, cp.done_through, INVOICE_DELETED, ctx.run_id, INVOICES.kind, ctx.scope.stripe_customer_id,
                since, inp.limit - cp.checked)
            write, paused = await may_write(conn, ctx)
        cp.paused = cp.paused or paused
        async with Heartbeater(cp) as hb:
            for r in rows:
                iid = r["stripe_invoice_id"]
                async with self.pool.acquire() as conn:
                    read_at = await read_time(conn)
                if await self.stripe.retrieve("invoice", iid) is None:
                    if r["status"] == DRAFT:
                        c.deleted_drafts += 1
                        sample(f.deleted_drafts, iid)
                        if write and await self._mark_deleted(ctx, iid, read_at):
                            c.drafts_marked_deleted += 1
                    else:
                        c.missing_in_stripe += 1
                        sample(f.missing_in_stripe, iid)
                cp.done_through, cp.checked = iid, cp.checked + 1
                hb.record(cp)
        # A full page (this attempt's rows and an earlier attempt's) means there may be more.
        next_cursor = cp.done_through if cp.checked >= inp.limit else None
        return InvoicePageResult(next_cursor=next_cursor, counts=c, findings=f, paused=cp.paused)

    async def _mark_deleted(self, ctx: PagedRunContext, invoice_id: str, read_at: datetime) -> bool:
        """A draft Stripe no longer has (read at `read_at`): status `deleted`, audited; unless a
        webhook wrote the row after that read, or it is no longer a draft."""
        async with self.pool.acquire() as conn, conn.transaction():
            await lock_object(conn, invoice_id)
            row = await conn.fetchrow(
                """
                UPDATE billing.invoices SET status = $2, deleted_at = coalesce(deleted_at, now()),
                       synced_at = $3, updated_at = now()
                 WHERE stripe_invoice_id = $1 AND status = $4 AND (synced_at IS NULL OR synced_at <= $3)
                RETURNING stripe_customer_id, deleted_at
                """, invoice_id, INVOICE_DELETED, read_at, DRAFT)
            if row is None:
                return False
            await write_audit(conn, ctx.audit_entry(
                AuditAction.INVOICE_RESYNC, entity_type=INVOICES.kind, entity_id=invoice_id,
                before={"status": DRAFT, "deleted_at": None},
                after={"status": INVOICE_DELETED, "deleted_at": row["deleted_at"].isoformat()},
                idempotency_key=run_write_key(ctx, INVOICES.audit_kind, invoice_id),
                customer_id=await _customer_of(conn, row["stripe_customer_id"])))
            return True


async def write_invoice(conn: asyncpg.Connection, cur: asyncpg.Record | None, row: InvoiceRow, raw: dict[str, Any],
                        listed_at: datetime) -> str | None:
    """The mirror's write of a fix (`mirror.WriteRow`); RevenueReconciliation's fixes use it too."""
    await upsert_invoice(conn, row, raw, read_at=listed_at)
    return await _customer_of(conn, row.stripe_customer_id)
