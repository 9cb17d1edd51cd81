"""ResyncSubscriptions' activities (Stripe + Postgres). What every paged run shares (its start
and cleanup, scope, pause check and scratch rows) is in common/paged_activities.py; what every
mirror resync shares (paging, compare, fix, audit) in resync/mirror.py.

A subscription is compared through the same mapping as the webhook handler
(`subscription_row(...).compared()`), and written through the same upsert, so the resync and the
webhooks can never fight over what "the local copy" is."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg
from temporalio import activity

from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import SubscriptionRow, subscription_row
from common.audit import AuditAction
from common.heartbeat import Heartbeater, resume
from common.paged import sample
from resync.mirror import MirrorSpec, compare_listing, compare_page, mirror_rows, page_result
from resync.types import (
    CountActiveInput,
    CountActiveResult,
    LocalCheckpoint,
    LocalPageInput,
    LocalPageResult,
    ResyncCheckpoint,
    ResyncPageInput,
    ResyncPageResult,
)
from webhooks.activities import StripeEventActivities
from webhooks.handlers import upsert_subscription

log = logging.getLogger("billing.resync")

SEEN_SUBSCRIPTION = "subscription"  # billing.run_seen kind
ACTIVE = "active"


SUBSCRIPTIONS = MirrorSpec(
    kind=SEEN_SUBSCRIPTION, table="billing.subscriptions", key="stripe_subscription_id",
    fields=SubscriptionRow.COMPARED, to_row=subscription_row, create_action=AuditAction.SUBSCRIPTION_CREATE,
    update_action=AuditAction.SUBSCRIPTION_RESYNC, audit_kind="resync")


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

        async def list_page(after: str | None) -> tuple[list[dict], bool]:
            return await self.stripe.list_subscriptions_page(
                customer=ctx.scope.stripe_customer_id, starting_after=after, limit=inp.page_size)

        async def compare(subs: list[dict[str, Any]], listed_at: datetime) -> None:
            rows = mirror_rows(SUBSCRIPTIONS, subs)
            cp.counts.active_stripe += sum(r.status == ACTIVE for r in rows)
            await compare_page(self.pool, ctx, SUBSCRIPTIONS, subs, rows, listed_at, cp, self._write)

        done = await compare_listing(self.pool, cp, list_page, compare, inp.max_pages)
        return page_result(ResyncPageResult, cp, done)

    async def _write(self, conn: asyncpg.Connection, cur: asyncpg.Record | None, row: SubscriptionRow,
                     raw: dict[str, Any], listed_at: datetime) -> str | None:
        customer_id = cur["customer_id"] if cur is not None else None
        if customer_id is None:
            customer_id = await self.events.ensure_customer(conn, row.stripe_customer_id)
        await upsert_subscription(conn, row, customer_id, raw)
        return customer_id

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
