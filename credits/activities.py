"""RepairCredits' and AdjustCredits' activities (Stripe + Postgres): checkouts to grants and
manual adjustments. The ledger consistency checks are in credits/checks.py.

Grants go through the webhook handler's own `grant_credits` (one ledger row per checkout
session, ever, by the ledger's unique `source`; the balance moves only when that row is
inserted; audited with the new ledger row's own key). Balances are repaired to the ledger's sum
under the balance row's lock. A balance can never be negative (CHECK balance >= 0): a customer
whose ledger sums below zero is *refused*: RepairCredits writes nothing for that customer (no
grant, no balance repair), reports it, and goes on with every other customer. The check is made
under the balance row's lock in the transaction of each write, so no write for that customer
can slip in before it. A manual debit below zero is refused and writes nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import CreditGrant, StripeObjectError, credit_grant
from common.audit import AuditAction, ledger_audit_key, write_audit
from common.heartbeat import heartbeat_pages, resume
from common.paged import ErrorType, PagedRunContext, RunScope, sample
from common.paged_activities import mark_seen, may_write
from common.types import Mode
from credits.checks import CHECKOUT_SOURCE_PREFIX, lock_balance
from credits.types import (
    AdjustActivityInput,
    AdjustCreditsResult,
    BalanceOutcome,
    CheckoutPageInput,
    CheckoutSource,
    CreditCheckpoint,
    CreditFindings,
    CreditPageResult,
)
from webhooks.activities import StripeEventActivities
from webhooks.handlers import PermanentEventError, lock_object

log = logging.getLogger("billing.credits")

# The events that complete a credit purchase (the webhook handler grants on both).
CHECKOUT_EVENT_TYPES = ["checkout.session.completed", "checkout.session.async_payment_succeeded"]
SEEN_CHECKOUT = "checkout"  # billing.run_seen kind
MANUAL_SOURCE_PREFIX = "manual:"


def negative_balance_error(customer_id: str, value: int) -> ApplicationError:
    return ApplicationError(
        f"customer {customer_id}: refusing to set the credit balance to {value}; a balance cannot be "
        "negative (credit_balances CHECK balance >= 0). Nothing was written.",
        type=ErrorType.NEGATIVE_BALANCE.value, non_retryable=True)


class CreditActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway,
                 events: StripeEventActivities) -> None:
        self.pool = pool
        self.stripe = stripe_gateway
        self.events = events

    # ------------------------------------------------------------------ checkouts -> grants

    @activity.defn(name="credits.checkout_page")
    async def checkout_page(self, inp: CheckoutPageInput) -> CreditPageResult:
        """Completed checkouts from Stripe's events (newest first, within retention) or from the
        inbox (oldest first, any age): each paid credit purchase must have a grant; a missing one
        is granted in apply mode. Heartbeats its cursor after each page."""
        cp = resume(CreditCheckpoint, CreditCheckpoint(cursor=inp.cursor))

        async def one_page() -> bool:
            if inp.source == CheckoutSource.STRIPE:
                events, has_more = await self.stripe.list_events_page(
                    created_gte=inp.since_ts, created_lt=inp.until_ts, types=CHECKOUT_EVENT_TYPES,
                    starting_after=cp.cursor, limit=inp.page_size)
                next_cursor = events[-1]["id"] if events else None
            else:
                events, next_cursor = await self._inbox_page(inp, cp.cursor)
                has_more = next_cursor is not None
            cp.counts.checkout_events += len(events)
            await self._examine(inp.context, events, cp)
            cp.cursor = next_cursor or cp.cursor
            cp.pages += 1
            return has_more and bool(events)

        done = await heartbeat_pages(cp, one_page, max_pages=inp.max_pages - cp.pages)
        return CreditPageResult(next_cursor=None if done else cp.cursor, counts=cp.counts, findings=cp.findings,
                                paused=cp.paused)

    async def _inbox_page(self, inp: CheckoutPageInput, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        after_created, after_id = None, None
        if cursor:
            micros, after_id = cursor.split("|", 1)
            after_created = datetime.fromtimestamp(int(micros) / 1_000_000, tz=UTC)
        scope = inp.context.scope
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT event_id, created, payload FROM billing.stripe_events
                WHERE type = ANY($1)
                  AND ($2::timestamptz IS NULL OR (created, event_id) > ($2, $3::text))
                  AND ($4::text IS NULL OR payload->'data'->'object'->>'customer' = $4)
                ORDER BY created, event_id LIMIT $5
                """, CHECKOUT_EVENT_TYPES, after_created, after_id, scope.stripe_customer_id, inp.page_size)
        if len(rows) < inp.page_size:
            return [r["payload"] for r in rows], None
        last = rows[-1]
        return [r["payload"] for r in rows], f"{int(last['created'].timestamp() * 1_000_000)}|{last['event_id']}"

    async def _examine(self, ctx: PagedRunContext, events: list[dict[str, Any]], cp: CreditCheckpoint) -> None:
        c, f = cp.counts, cp.findings
        grants: dict[str, CreditGrant] = {}
        for e in events:
            obj = (e.get("data") or {}).get("object") or {}
            if ctx.scope.stripe_customer_id and obj.get("customer") != ctx.scope.stripe_customer_id:
                continue
            try:
                grant = credit_grant(obj)
            except StripeObjectError as err:
                c.invalid_checkouts += 1
                sample(f.invalid_checkouts, str(err))
                continue
            if grant is not None:  # not a (paid) credit purchase otherwise
                grants.setdefault(grant.checkout_session_id, grant)
        if not grants:
            return
        async with self.pool.acquire() as conn:
            # A session announced by several events, or by Stripe and the inbox, counts once. It
            # is marked seen only after its page is done: a page retried after a crash (or a
            # transient Stripe error while granting) examines its sessions again.
            seen = {r["key"] for r in await conn.fetch(
                "SELECT key FROM billing.run_seen WHERE run_id = $1 AND kind = $2 AND key = ANY($3)",
                ctx.run_id, SEEN_CHECKOUT, sorted(grants))}
            todo = [grants[cs] for cs in sorted(grants) if cs not in seen]
            if not todo:
                return
            have = await _grant_counts(conn, [g.checkout_session_id for g in todo])
            write, paused = await may_write(conn, ctx)
            cp.paused = cp.paused or paused
            for g in todo:
                c.purchases += 1
                if have.get(g.checkout_session_id, 0) > 0:
                    c.granted_ok += 1
                    continue
                c.missing_grants += 1
                sample(f.missing_grants, g.checkout_session_id)
                if write:
                    outcome = await self._grant(conn, ctx, g.checkout_session_id, f)
                    c.grants_made += outcome == BalanceOutcome.WRITTEN
                    c.grants_refused += outcome == BalanceOutcome.REFUSED
            await mark_seen(conn, ctx.run_id, SEEN_CHECKOUT, [g.checkout_session_id for g in todo])

    async def _grant(self, conn: asyncpg.Connection, ctx: PagedRunContext, cs_id: str,
                     f: CreditFindings) -> BalanceOutcome:
        """The webhook handler's grant, under the same lock, from a fresh read of the session;
        refused (nothing written) when the customer's ledger sums below zero."""
        try:
            async with conn.transaction():
                await lock_object(conn, cs_id)
                if (await _grant_counts(conn, [cs_id])).get(cs_id, 0) > 0:
                    return BalanceOutcome.UNCHANGED  # a delivery granted it meanwhile
                fresh = await self.stripe.retrieve("checkout.session", cs_id)
                grant = credit_grant(fresh) if fresh is not None else None
                if grant is None:
                    return BalanceOutcome.UNCHANGED
                customer_id = await self.events.ensure_customer(conn, grant.stripe_customer_id)
                if customer_id is not None:
                    _, ledger = await lock_balance(conn, customer_id)
                    if ledger < 0:
                        sample(f.refused, f"{customer_id}: grant of {cs_id} refused: the ledger sums to "
                                          f"{ledger}; nothing written for this customer")
                        return BalanceOutcome.REFUSED
                await self.events.grant_credits(conn, grant, event_id=None, actor=ctx.actor,
                                                workflow_id=ctx.run_id, run_id=ctx.workflow_run_id)
                return BalanceOutcome.WRITTEN
        except (PermanentEventError, StripeObjectError) as e:
            sample(f.invalid_checkouts, f"{cs_id}: {e}")
            return BalanceOutcome.UNCHANGED

    # ------------------------------------------------------------------ manual adjustment

    @activity.defn(name="credits.adjust")
    async def adjust(self, inp: AdjustActivityInput) -> AdjustCreditsResult:
        """One ledger row (source `manual:<idempotency key>`, or `manual:<workflow id>` when the
        request has no key), the balance and one audit row, in one transaction. The same key again
        writes nothing and says so (`already_applied`); the same key for another customer or
        amount is refused. Not subject to the auto-healing pause: it is an operator's explicit act."""
        req = inp.request
        source = f"{MANUAL_SOURCE_PREFIX}{req.idempotency_key or inp.workflow_id}"
        async with self.pool.acquire() as conn, conn.transaction():
            known = await conn.fetchval("SELECT 1 FROM billing.customers WHERE customer_id = $1", req.customer)
            if known is None:
                raise ApplicationError(f"unknown customer: {req.customer}",
                                       type=ErrorType.UNKNOWN_CUSTOMER.value, non_retryable=True)
            before, _ = await lock_balance(conn, req.customer)
            # Under the balance lock: a concurrent run of the same key waits here, then finds its row.
            done = await conn.fetchrow(
                "SELECT id, customer_id, amount FROM billing.credit_ledger WHERE source = $1", source)
            if done is not None:  # applied before: by an earlier command with this key, or a retry
                if (done["customer_id"], done["amount"]) != (req.customer, req.amount):
                    raise ApplicationError(
                        f"idempotency key {req.idempotency_key or inp.workflow_id!r} was already used for "
                        f"{done['amount']:+d} to {done['customer_id']} (ledger row {done['id']}); "
                        "give another --idempotency-key for a different adjustment. Nothing was written.",
                        type=ErrorType.IDEMPOTENCY_KEY_REUSED.value, non_retryable=True)
                return AdjustCreditsResult(
                    workflow_id=inp.workflow_id, customer=req.customer, amount=req.amount,
                    balance_before=before, balance_after=before, source=source,
                    ledger_id=done["id"], actor=req.actor, reason=req.reason, already_applied=True,
                    idempotency_key=req.idempotency_key)
            after = before + req.amount
            if after < 0:
                raise ApplicationError(
                    f"customer {req.customer}: a debit of {-req.amount} would make the credit balance "
                    f"{after} (balance {before}); a balance cannot be negative. Nothing was written.",
                    type=ErrorType.NEGATIVE_BALANCE.value, non_retryable=True)
            ledger_id = await conn.fetchval(
                """
                INSERT INTO billing.credit_ledger (customer_id, amount, source, reason, actor)
                VALUES ($1, $2, $3, $4, $5) RETURNING id
                """, req.customer, req.amount, source, req.reason, req.actor)
            try:
                await conn.execute(
                    "UPDATE billing.credit_balances SET balance = $2, updated_at = now() WHERE customer_id = $1",
                    req.customer, after)
            except asyncpg.CheckViolationError as e:
                raise negative_balance_error(req.customer, after) from e
            ctx = PagedRunContext(run_id=inp.workflow_id, workflow_run_id=inp.workflow_run_id,
                             scope=RunScope(customer_id=req.customer), mode=Mode.APPLY, actor=req.actor,
                             reason=req.reason, manual=True)
            await write_audit(conn, ctx.audit_entry(
                AuditAction.CREDITS_ADJUST, entity_type="credit_balance", entity_id=req.customer,
                before={"balance": before},
                after={"balance": after, "amount": req.amount, "ledger_id": ledger_id, "ledger_source": source},
                idempotency_key=ledger_audit_key(ledger_id), customer_id=req.customer))
        return AdjustCreditsResult(
            workflow_id=inp.workflow_id, customer=req.customer, amount=req.amount, balance_before=before,
            balance_after=after, source=source, ledger_id=ledger_id, actor=req.actor, reason=req.reason,
            idempotency_key=req.idempotency_key)


async def _grant_counts(conn: asyncpg.Connection, sessions: list[str]) -> dict[str, int]:
    """Ledger rows per checkout session, by `checkout_session_id` or by the grant's source."""
    rows = await conn.fetch(
        """
        SELECT coalesce(checkout_session_id, substr(source, $3)) AS cs, count(*) AS n
        FROM billing.credit_ledger
        WHERE checkout_session_id = ANY($1) OR source = ANY($2)
        GROUP BY 1
        """, sessions, [CHECKOUT_SOURCE_PREFIX + s for s in sessions], len(CHECKOUT_SOURCE_PREFIX) + 1)
    return {r["cs"]: r["n"] for r in rows}

