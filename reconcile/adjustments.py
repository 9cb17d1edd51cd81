"""Invoice adjustments of closed periods, applied exactly once (the outbox pattern again).

An approved `InvoiceAdjustment` (reconcile/adjust.py) is re-checked under the lock of its
(invoice, meter) against the period now (ledger, what the invoice billed, our adjustments since,
the invoice's status); a plan that no longer matches is `stale`, never applied blind. Then the
outbox row (`billing.invoice_adjustments`, status `planned`) and its audit row are written in
one transaction, the Stripe object is created with the identifier as its Idempotency-Key, and
the row becomes `sent` with the object's id. A crash between the two leaves a `planned` row: the
next attempt sends it again under the same key, so Stripe answers with the object it already
created. Past Stripe's 24 h idempotency window a `planned` row is not re-sent but marked
`failed` for a person to check (the object carries the identifier in its metadata)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import stripe

from billing.stripe_gateway import StripeGateway
from common.audit import AuditAction, AuditInput, write_audit
from reconcile import periods_store
from reconcile.adjust import choose_kind
from reconcile.plans import Finding, InvoiceAdjustment
from reconcile.types import Counts, DiscrepancyStatus, RunContext

# Stripe keeps an Idempotency-Key's answer for at least 24 h; an hour of margin.
RESEND_WINDOW = timedelta(hours=23)

log = logging.getLogger(__name__)


class AdjustmentWriter:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway) -> None:
        self.pool = pool
        self.stripe = stripe

    async def apply(self, ctx: RunContext, f: Finding, plan: InvoiceAdjustment,
                    counts: Counts) -> tuple[DiscrepancyStatus, str]:
        assert f.stripe_customer_id is not None
        lock = f"invoice-adjustment|{plan.stripe_invoice_id}|{f.meter}"
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock)
            try:
                return await self._apply_locked(conn, ctx, f, plan, counts)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock)

    async def _apply_locked(self, conn: asyncpg.Connection, ctx: RunContext, f: Finding,
                            plan: InvoiceAdjustment, counts: Counts) -> tuple[DiscrepancyStatus, str]:
        row = await conn.fetchrow(
            "SELECT status, stripe_object_id, planned_at FROM billing.invoice_adjustments WHERE identifier = $1",
            plan.identifier)
        if row is not None and row["status"] == "sent":
            return DiscrepancyStatus.SKIPPED, f"already applied: {plan.adjustment} {row['stripe_object_id']}"
        if row is not None and row["status"] == "failed":
            return DiscrepancyStatus.FAILED, "the outbox row of this adjustment failed earlier; see it in invoice_adjustments"
        now = datetime.now(UTC)
        if row is None:
            stale = await self._recheck(conn, ctx, f, plan)
            if stale:
                counts.stale_skipped += 1
                return DiscrepancyStatus.STALE, f"{stale}; not applied, re-planned by the next plan"[:500]
            async with conn.transaction():
                await conn.execute(
                    """
                    INSERT INTO billing.invoice_adjustments
                        (identifier, customer_id, stripe_customer_id, meter, stripe_invoice_id, period_start,
                         period_end, kind, quantity, amount, currency, description, status, run_id,
                         workflow_run_id)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'planned', $13, $14)
                    """,
                    plan.identifier, f.customer_id, f.stripe_customer_id, _meter_id(ctx, f.meter),
                    plan.stripe_invoice_id, plan.period_start, plan.period_end, plan.adjustment,
                    plan.quantity, plan.amount, plan.currency, plan.description, ctx.run_id,
                    ctx.workflow_run_id)
                await write_audit(conn, AuditInput(
                    actor=ctx.actor, action=AuditAction.USAGE_INVOICE_ADJUSTMENT, entity_type="invoice",
                    entity_id=plan.stripe_invoice_id, reason=plan.description, customer_id=f.customer_id,
                    after={"kind": str(plan.adjustment), "identifier": plan.identifier,
                           "quantity": str(plan.quantity), "amount": plan.amount, "currency": plan.currency,
                           "meter": f.meter},
                    workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                    idempotency_key=f"invoice-adjustment|{plan.identifier}"))
        elif now - row["planned_at"] > RESEND_WINDOW:
            await _fail(conn, plan.identifier, "planned more than 23 h ago and never confirmed sent: not re-sent "
                        "past Stripe's idempotency window; check Stripe for metadata identifier")
            counts.reconcile_failures += 1
            return DiscrepancyStatus.FAILED, "stuck in the outbox past Stripe's idempotency window; check by hand"
        return await self._send(conn, f, plan, counts)

    async def _recheck(self, conn: asyncpg.Connection, ctx: RunContext, f: Finding,
                       plan: InvoiceAdjustment) -> str:
        """Why the plan no longer fits the period ("": it still does)."""
        now = await periods_store.closed_periods(conn, ctx, [f.customer_id], invoice=plan.stripe_invoice_id)
        fresh = next((c for c in now if c.meter == f.meter), None)
        if fresh is None:
            return "the invoice or the item is no longer in the mirror"
        if fresh.ledger != plan.ledger or fresh.billed + fresh.adjusted != plan.billed:
            return (f"the period changed since the plan (ledger {plan.ledger} -> {fresh.ledger}, "
                    f"billed and adjusted {plan.billed} -> {fresh.billed + fresh.adjusted})")
        if choose_kind(plan.quantity, plan.amount, fresh.invoice_status, fresh.creditable) != plan.adjustment:
            return f"the invoice is now {fresh.invoice_status} (creditable {fresh.creditable}): {plan.adjustment} no longer applies"
        return ""

    async def _send(self, conn: asyncpg.Connection, f: Finding, plan: InvoiceAdjustment,
                    counts: Counts) -> tuple[DiscrepancyStatus, str]:
        assert f.stripe_customer_id is not None
        paid = await conn.fetchval("SELECT status = 'paid' FROM billing.invoices WHERE stripe_invoice_id = $1",
                                   plan.stripe_invoice_id)
        try:
            object_id = await self.stripe.create_adjustment(
                plan.adjustment, identifier=plan.identifier, customer=f.stripe_customer_id,
                invoice=plan.stripe_invoice_id, amount=plan.amount, currency=plan.currency,
                description=plan.description, paid_invoice=bool(paid),
                metadata={"billing_recon_identifier": plan.identifier, "meter": f.meter,
                          "quantity": str(plan.quantity)})
        except stripe.InvalidRequestError as e:
            # A 4xx retrying cannot fix (the invoice changed under us, a currency mismatch).
            msg = f"Stripe refused the {plan.adjustment}: {e.user_message or e}"[:500]
            await _fail(conn, plan.identifier, msg)
            counts.reconcile_failures += 1
            return DiscrepancyStatus.FAILED, msg
        counts.stripe_writes += 1
        await conn.execute(
            "UPDATE billing.invoice_adjustments SET status = 'sent', stripe_object_id = $2, sent_at = now() "
            "WHERE identifier = $1", plan.identifier, object_id)
        log.info("invoice adjustment %s: %s %s of %s %s", plan.identifier, plan.adjustment, object_id,
                 plan.amount, plan.currency)
        return DiscrepancyStatus.APPLIED, f"{plan.adjustment} {object_id}: {plan.amount} {plan.currency}"


async def _fail(conn: asyncpg.Connection, identifier: str, error: str) -> None:
    await conn.execute("UPDATE billing.invoice_adjustments SET status = 'failed', error = $2 WHERE identifier = $1",
                       identifier, error[:500])


def _meter_id(ctx: RunContext, meter: str) -> str:
    return next(m.stripe_meter_id for m in ctx.meters if m.event_name == meter)
