"""ResyncSubscriptions' activities (Stripe + Postgres). What every paged run shares (its start
and cleanup, scope, pause check and scratch rows) is in common/paged_activities.py.

A subscription is compared through the same mapping as the webhook handler
(`subscription_row(...).compared()`), and written through the same upsert, so the resync and the
webhooks can never fight over what "the local copy" is. Each fix is one transaction: the
object's advisory lock (the handler takes the same one), the local row `FOR UPDATE`, the upsert
and one audit row with before and after."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import StripeObjectError, SubscriptionRow, subscription_row
from common.audit import AuditAction, write_audit
from common.heartbeat import Heartbeater, heartbeat_pages, resume
from common.paged import PagedRunContext, run_write_key, sample
from common.paged_activities import mark_seen, may_write
from resync.types import (
    CountActiveInput,
    CountActiveResult,
    LocalCheckpoint,
    LocalPageInput,
    LocalPageResult,
    ResyncCheckpoint,
    ResyncCounts,
    ResyncPageInput,
    ResyncPageResult,
)
from webhooks.activities import (
    PermanentEventError,
    StripeEventActivities,
    lock_object,
    upsert_subscription,
)

log = logging.getLogger("billing.resync")

SEEN_SUBSCRIPTION = "subscription"  # billing.run_seen kind
ACTIVE = "active"


# ---------------------------------------------------------------------------- helpers


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def local_compared(rec: asyncpg.Record) -> dict[str, Any]:
    """A local row in the shape of `SubscriptionRow.compared()`."""
    out: dict[str, Any] = {}
    for f in SubscriptionRow.COMPARED:
        v = rec[f]
        out[f] = _iso(v) if isinstance(v, datetime) else v
    return out


def differing_fields(stripe: dict[str, Any], local: dict[str, Any]) -> list[str]:
    return [f for f in SubscriptionRow.COMPARED if stripe.get(f) != local.get(f)]


# ---------------------------------------------------------------------------- activities


class ResyncActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway,
                 events: StripeEventActivities) -> None:
        self.pool = pool
        self.stripe = stripe_gateway
        self.events = events  # the webhook handlers' shared writes (customers, grants)

    @activity.defn(name="resync.count_active")
    async def count_active(self, inp: CountActiveInput) -> CountActiveResult:
        async with self.pool.acquire() as conn:
            n = await conn.fetchval(
                f"SELECT count(*) FROM billing.subscriptions s WHERE status = $1 {_scope_clause(2)}",
                ACTIVE, inp.scope.stripe_customer_id, inp.scope.customer_id)
        return CountActiveResult(active=n)

    @activity.defn(name="resync.subscriptions_page")
    async def subscriptions_page(self, inp: ResyncPageInput) -> ResyncPageResult:
        """Up to `max_pages` pages of Stripe's subscriptions (every status) from the cursor:
        compare each with the local row and, in apply mode, fix it. Heartbeats the cursor after
        every page and resumes from it."""
        cp = resume(ResyncCheckpoint, ResyncCheckpoint(starting_after=inp.starting_after))
        ctx = inp.context

        async def one_page() -> bool:
            async with self.pool.acquire() as conn:
                # Postgres' clock: a local row synced after this moment is fresher than the page.
                listed_at = await conn.fetchval("SELECT clock_timestamp()")
            subs, has_more = await self.stripe.list_subscriptions_page(
                customer=ctx.scope.stripe_customer_id, starting_after=cp.starting_after, limit=inp.page_size)
            if subs:
                await self._compare_page(ctx, subs, listed_at, cp)
                cp.starting_after = subs[-1]["id"]
            cp.pages += 1
            return has_more and bool(subs)

        done = await heartbeat_pages(cp, one_page, max_pages=inp.max_pages - cp.pages)
        return ResyncPageResult(next_cursor=None if done else cp.starting_after, pages=cp.pages,
                                counts=cp.counts, findings=cp.findings, paused=cp.paused)

    async def _compare_page(self, ctx: PagedRunContext, subs: list[dict[str, Any]], listed_at: datetime,
                            cp: ResyncCheckpoint) -> None:
        try:
            rows = [subscription_row(s) for s in subs]
        except StripeObjectError as e:
            raise ApplicationError(f"Stripe returned an unmappable subscription: {e}",
                                   type="InvalidSubscription", non_retryable=True) from e
        ids = [r.stripe_subscription_id for r in rows]
        c, f = cp.counts, cp.findings
        async with self.pool.acquire() as conn:
            await mark_seen(conn, ctx.run_id, SEEN_SUBSCRIPTION, ids)
            local = {r["stripe_subscription_id"]: r for r in await conn.fetch(
                "SELECT * FROM billing.subscriptions WHERE stripe_subscription_id = ANY($1)", ids)}
            write, paused = await may_write(conn, ctx)
            cp.paused = cp.paused or paused
            for raw, row in zip(subs, rows, strict=True):
                sid = row.stripe_subscription_id
                c.active_stripe += row.status == ACTIVE
                have = local.get(sid)
                if have is None:
                    c.missing_local += 1
                    sample(f.missing_local, sid)
                    if write and await self._fix(conn, ctx, raw, row, listed_at, c):
                        c.created += 1
                    continue
                c.compared += 1
                diff = differing_fields(row.compared(), local_compared(have))
                if not diff:
                    c.matched += 1
                    continue
                c.mismatched += 1
                for name in diff:
                    c.fields[name] = c.fields.get(name, 0) + 1
                sample(f.mismatched, f"{sid}: {', '.join(diff)}")
                if write and await self._fix(conn, ctx, raw, row, listed_at, c):
                    c.fixed += 1

    async def _fix(self, conn: asyncpg.Connection, ctx: PagedRunContext, raw: dict[str, Any],
                   row: SubscriptionRow, listed_at: datetime, c: ResyncCounts) -> bool:
        """Write Stripe's copy and audit it, unless a webhook wrote a fresher copy since the page
        was listed (it re-reads Stripe, so its copy is at least as new) or nothing differs any
        more. True when a row was written."""
        sid = row.stripe_subscription_id
        try:
            async with conn.transaction():
                await lock_object(conn, sid)
                cur = await conn.fetchrow(
                    "SELECT * FROM billing.subscriptions WHERE stripe_subscription_id = $1 FOR UPDATE", sid)
                if cur is not None and cur["synced_at"] is not None and cur["synced_at"] > listed_at:
                    return False
                before = local_compared(cur) if cur is not None else None
                after = row.compared()
                changed = differing_fields(after, before) if before is not None else list(after)
                if not changed:
                    return False
                customer_id = cur["customer_id"] if cur is not None else None
                if customer_id is None:
                    customer_id = await self.events.ensure_customer(conn, row.stripe_customer_id)
                await upsert_subscription(conn, row, customer_id, raw)
                await write_audit(conn, ctx.audit_entry(
                    AuditAction.SUBSCRIPTION_CREATE if before is None else AuditAction.SUBSCRIPTION_RESYNC,
                    entity_type="subscription", entity_id=sid,
                    before={k: before[k] for k in changed} if before is not None else None,
                    after={k: after[k] for k in changed},
                    idempotency_key=run_write_key(ctx, "resync", sid), customer_id=customer_id))
                return True
        except PermanentEventError as e:  # e.g. a customer-id conflict: report, go on
            log.warning("subscription %s not fixed: %s", sid, e)
            c.fix_failures += 1
            return False

    @activity.defn(name="resync.local_page")
    async def local_page(self, inp: LocalPageInput) -> LocalPageResult:
        """Local rows in scope that Stripe's listing never returned. Each candidate is confirmed
        with a read (a subscription created after the listing began is not missing). Reported,
        never deleted."""
        ctx = inp.context
        cp = resume(LocalCheckpoint, LocalCheckpoint(done_through=inp.after))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"""
                SELECT s.stripe_subscription_id FROM billing.subscriptions s
                WHERE ($1::text IS NULL OR s.stripe_subscription_id > $1)
                  AND NOT EXISTS (SELECT 1 FROM billing.run_seen r WHERE r.run_id = $2 AND r.kind = $3
                                  AND r.key = s.stripe_subscription_id)
                  {_scope_clause(5)}
                ORDER BY s.stripe_subscription_id LIMIT $4
                """, cp.done_through, ctx.run_id, SEEN_SUBSCRIPTION, inp.limit - cp.checked,
                ctx.scope.stripe_customer_id, ctx.scope.customer_id)
        async with Heartbeater(cp) as hb:
            for r in rows:
                sid = r["stripe_subscription_id"]
                if await self.stripe.retrieve("subscription", sid) is None:
                    cp.missing_in_stripe += 1
                    sample(cp.sample, sid)
                cp.done_through, cp.checked = sid, cp.checked + 1
                hb.record(cp)
        # A full page (this attempt's rows and an earlier attempt's) means there may be more.
        next_cursor = cp.done_through if cp.checked >= inp.limit else None
        return LocalPageResult(next_cursor=next_cursor, missing_in_stripe=cp.missing_in_stripe,
                               sample=cp.sample)


def _scope_clause(first_param: int) -> str:
    """Rows of the run's customer (by Stripe id or ours); no filter when both are NULL."""
    a, b = first_param, first_param + 1
    return (f"AND (${a}::text IS NULL OR s.stripe_customer_id = ${a} OR s.customer_id = ${b}::text)")
