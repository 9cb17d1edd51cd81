"""RepairCredits' ledger checks (Postgres, and Stripe's paid invoices): checkout sessions
granted more than once, balances against their ledger (repaired in apply mode, under the
balance row's lock; a ledger summing below zero is refused, never written), paid invoices
missing locally, and usage of closed periods never pushed. Everything but the balance repair
is reported only."""

from __future__ import annotations

from datetime import date

import asyncpg
from temporalio import activity

from billing.periods import billing_period
from billing.stripe_gateway import StripeGateway
from common.audit import AuditAction, write_audit
from common.heartbeat import Heartbeater, heartbeat_pages, resume
from common.paged import MAX_SAMPLE, PagedRunContext, run_write_key, sample
from common.paged_activities import may_write
from credits.types import (
    BalanceOutcome,
    BalancePageInput,
    CreditCheckpoint,
    CreditCounts,
    CreditFindings,
    CreditPageResult,
    DuplicatesInput,
    InvoiceCheckInput,
    InvoiceCheckpoint,
    InvoiceCheckResult,
    UsageCheckInput,
    UsageCheckResult,
)

CHECKOUT_SOURCE_PREFIX = "checkout:"  # a grant's ledger source: checkout:<checkout session id>
PAID = "paid"
PUSHED_STATUSES = ["planned", "sent", "confirmed"]  # P in docs/reconciliation.md


class LedgerCheckActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway) -> None:
        self.pool = pool
        self.stripe = stripe_gateway

    @activity.defn(name="credits.duplicates")
    async def duplicates(self, inp: DuplicatesInput) -> CreditPageResult:
        """Checkout sessions with more than one ledger row, whatever their source: reported."""
        scope = inp.context.scope
        result = CreditPageResult(next_cursor=None, counts=CreditCounts(), findings=CreditFindings())
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT coalesce(checkout_session_id, substr(source, $1)) AS cs, count(*) AS n,
                       array_agg(source ORDER BY id) AS sources
                FROM billing.credit_ledger
                WHERE (checkout_session_id IS NOT NULL OR source LIKE $2)
                  AND ($3::text IS NULL OR customer_id = $3)
                GROUP BY 1 HAVING count(*) > 1 ORDER BY 1
                """, len(CHECKOUT_SOURCE_PREFIX) + 1, CHECKOUT_SOURCE_PREFIX + "%", scope.customer_id)
        result.counts.duplicate_grants = len(rows)
        for r in rows[:MAX_SAMPLE]:
            result.findings.duplicate_grants.append(f"{r['cs']}: {r['n']} rows ({', '.join(r['sources'])})")
        return result

    @activity.defn(name="credits.balances_page")
    async def balances_page(self, inp: BalancePageInput) -> CreditPageResult:
        """credit_balances must equal the ledger's sum per customer; repaired in apply mode."""
        ctx = inp.context
        cp = resume(CreditCheckpoint, CreditCheckpoint(cursor=inp.after))
        c, f = cp.counts, cp.findings
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT c.customer_id, coalesce(b.balance, 0) AS balance,
                       coalesce((SELECT sum(l.amount) FROM billing.credit_ledger l
                                 WHERE l.customer_id = c.customer_id), 0)::bigint AS ledger
                FROM billing.customers c LEFT JOIN billing.credit_balances b USING (customer_id)
                WHERE ($1::text IS NULL OR c.customer_id > $1) AND ($2::text IS NULL OR c.customer_id = $2)
                ORDER BY c.customer_id LIMIT $3
                """, cp.cursor, ctx.scope.customer_id, inp.limit - c.customers_checked)
            write, paused = await may_write(conn, ctx)
            cp.paused = cp.paused or paused
            async with Heartbeater(cp) as hb:
                for r in rows:
                    c.customers_checked += 1
                    if r["balance"] != r["ledger"]:
                        c.balance_mismatches += 1
                        sample(f.balance_mismatches,
                               f"{r['customer_id']}: balance {r['balance']}, ledger {r['ledger']}")
                        if r["ledger"] < 0:
                            c.negative_ledger += 1
                        if write:
                            outcome = await self._repair_balance(conn, ctx, r["customer_id"], f)
                            c.balances_repaired += outcome == BalanceOutcome.WRITTEN
                            c.refused_customers += outcome == BalanceOutcome.REFUSED
                    cp.cursor = r["customer_id"]
                    hb.record(cp)
        # A full page (this attempt's rows and an earlier attempt's) means there may be more.
        next_cursor = cp.cursor if c.customers_checked >= inp.limit else None
        return CreditPageResult(next_cursor=next_cursor, counts=c, findings=f, paused=cp.paused)

    async def _repair_balance(self, conn: asyncpg.Connection, ctx: PagedRunContext, customer_id: str,
                              f: CreditFindings) -> BalanceOutcome:
        async with conn.transaction():
            before, ledger = await lock_balance(conn, customer_id)
            if before == ledger:
                return BalanceOutcome.UNCHANGED
            if ledger < 0:
                sample(f.refused, f"{customer_id}: balance {before} not repaired: the ledger sums to {ledger}, "
                                  "below zero (CHECK balance >= 0); nothing written for this customer")
                return BalanceOutcome.REFUSED
            await conn.execute(
                "UPDATE billing.credit_balances SET balance = $2, updated_at = now() WHERE customer_id = $1",
                customer_id, ledger)
            await write_audit(conn, ctx.audit_entry(
                AuditAction.CREDITS_BALANCE_REPAIR, entity_type="credit_balance", entity_id=customer_id,
                before={"balance": before}, after={"balance": ledger, "ledger_sum": ledger},
                idempotency_key=run_write_key(ctx, "balance-repair", customer_id), customer_id=customer_id))
            return BalanceOutcome.WRITTEN

    @activity.defn(name="credits.paid_invoices_page")
    async def paid_invoices_page(self, inp: InvoiceCheckInput) -> InvoiceCheckResult:
        """Paid invoices in Stripe without a local `billing.invoices` row (reported)."""
        cp = resume(InvoiceCheckpoint, InvoiceCheckpoint(cursor=inp.starting_after))

        async def one_page() -> bool:
            invoices, has_more = await self.stripe.list_invoices_page(
                status=PAID, customer=inp.context.scope.stripe_customer_id, starting_after=cp.cursor,
                limit=inp.page_size)
            ids = [i["id"] for i in invoices]
            async with self.pool.acquire() as conn:
                known = {r["stripe_invoice_id"] for r in await conn.fetch(
                    "SELECT stripe_invoice_id FROM billing.invoices WHERE stripe_invoice_id = ANY($1)", ids)}
            cp.checked += len(ids)
            for i in ids:
                if i not in known:
                    cp.missing += 1
                    sample(cp.sample, i)
            cp.cursor = ids[-1] if ids else cp.cursor
            return has_more and bool(ids)

        done = await heartbeat_pages(cp, one_page, max_pages=inp.max_pages)
        return InvoiceCheckResult(next_cursor=None if done else cp.cursor, checked=cp.checked, missing=cp.missing,
                                  sample=cp.sample)

    @activity.defn(name="credits.unpushed_usage")
    async def unpushed_usage(self, inp: UsageCheckInput) -> UsageCheckResult:
        """(customer, meter, closed billing period) whose ledger L exceeds what we pushed P."""
        closed_before, _ = billing_period(date.fromisoformat(inp.today_iso))
        scope = inp.context.scope
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                WITH u AS (
                    SELECT customer_id, meter, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p,
                           sum(quantity) AS l
                    FROM billing.usage_events
                    WHERE occurred_at < ($1::date)::timestamp AT TIME ZONE 'UTC'
                      AND ($2::text IS NULL OR customer_id = $2)
                    GROUP BY 1, 2, 3),
                pu AS (
                    SELECT customer_id, meter, date_trunc('month', usage_day)::date AS p, sum(value) AS pv
                    FROM billing.stripe_usage_pushes
                    WHERE usage_day < $1 AND status = ANY($3) AND ($2::text IS NULL OR customer_id = $2)
                    GROUP BY 1, 2, 3)
                SELECT u.customer_id, u.meter, u.p, u.l, coalesce(pu.pv, 0) AS pv
                FROM u LEFT JOIN pu USING (customer_id, meter, p)
                WHERE u.l > coalesce(pu.pv, 0)
                ORDER BY 1, 2, 3
                """, closed_before, scope.customer_id, PUSHED_STATUSES)
        return UsageCheckResult(
            keys=len(rows),
            sample=[f"{r['customer_id']}|{r['meter']}|{r['p']:%Y-%m}: ledger {r['l']}, pushed {r['pv']}"
                    for r in rows[:MAX_SAMPLE]])


async def lock_balance(conn: asyncpg.Connection, customer_id: str) -> tuple[int, int]:
    """(balance, ledger sum) of a customer, the balance row locked `FOR UPDATE` (created at 0 if
    absent) before the ledger is summed. Every ledger writer updates the balance row in its own
    transaction, so no other ledger row of this customer commits before this transaction ends."""
    await conn.execute(
        "INSERT INTO billing.credit_balances (customer_id, balance) VALUES ($1, 0) ON CONFLICT DO NOTHING",
        customer_id)
    balance = await conn.fetchval(
        "SELECT balance FROM billing.credit_balances WHERE customer_id = $1 FOR UPDATE", customer_id)
    ledger = await conn.fetchval(
        "SELECT coalesce(sum(amount), 0)::bigint FROM billing.credit_ledger WHERE customer_id = $1", customer_id)
    return balance, ledger
