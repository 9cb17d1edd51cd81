"""The daily checks' activities: one per check (read Postgres and, for two of them, page through
a Stripe list), and one that records the run's results. Every check only reads; the Stripe
listings heartbeat their cursor and resume from it after a retry."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import asyncpg
from pydantic import BaseModel, Field
from temporalio import activity

from billing.settings import Settings
from billing.stripe_gateway import StripeGateway
from checks import notices, policy, store
from checks.policy import DayTypeTally, tally_key
from checks.types import CheckRequest, CheckResult, RecordChecksInput
from common.heartbeat import heartbeat_pages, resume
from common.paged_activities import mark_seen
from notify.outbox import never_failing
from webhooks.activities import type_patterns


class SubscriptionsCheckpoint(BaseModel):
    starting_after: str | None = None  # Stripe's ids so far are the run's scratch rows (store.SEEN_ACTIVE)


class EventsCheckpoint(BaseModel):
    starting_after: str | None = None
    tallies: dict[str, DayTypeTally] = Field(default_factory=dict)  # by policy.tally_key
    listed: int = 0  # missing event ids kept so far (at most sample_size in all)


class CheckActivities:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway, settings: Settings) -> None:
        self.pool = pool
        self.stripe = stripe
        self.settings = settings

    def _grace(self, req: CheckRequest) -> timedelta:
        minutes = req.grace_minutes if req.grace_minutes is not None else self.settings.checks_backlog_minutes
        return timedelta(minutes=minutes)

    @activity.defn(name="checks.active_subscriptions")
    async def active_subscriptions(self, req: CheckRequest) -> CheckResult:
        """Stripe's active subscriptions (`status=active`) vs the mirror's. Subscriptions created
        within the grace period are left out on both sides: their webhook may be in flight."""
        created_before = req.now - self._grace(req)
        fresh = SubscriptionsCheckpoint()
        cp = resume(SubscriptionsCheckpoint, fresh)
        if cp is fresh:  # a first attempt, or one that starts over: no ids from an earlier one
            async with self.pool.acquire() as conn:
                await store.forget_active(conn, req.run_id)

        async def one_page() -> bool:
            subs, has_more = await self.stripe.list_subscriptions_page(
                customer=None, starting_after=cp.starting_after, limit=req.page_size, status="active")
            async with self.pool.acquire() as conn:
                await mark_seen(conn, req.run_id, store.SEEN_ACTIVE,
                                [s["id"] for s in subs if s["created"] < created_before.timestamp()])
            if subs:
                cp.starting_after = subs[-1]["id"]
            return has_more and bool(subs)

        await heartbeat_pages(cp, one_page)
        async with self.pool.acquire() as conn:
            compared = await store.compare_active(conn, req.run_id, created_before, req.sample_size)
            await store.forget_active(conn, req.run_id)
        return policy.active_subscriptions(compared, sample=req.sample_size)

    @activity.defn(name="checks.webhook_gaps")
    async def webhook_gaps(self, req: CheckRequest) -> CheckResult:
        """Stripe's events of the last `webhook_days` days (up to the grace period: younger
        events may still be in delivery) per UTC day and type, each looked up in the inbox."""
        until = req.now - self._grace(req)
        since = req.now - timedelta(days=req.webhook_days)
        gte, lt = math.ceil(since.timestamp()), math.floor(until.timestamp())
        cp = resume(EventsCheckpoint, EventsCheckpoint())

        async def one_page() -> bool:
            events, has_more = await self.stripe.list_events_page(
                created_gte=gte, created_lt=lt, types=req.webhook_types, starting_after=cp.starting_after,
                limit=req.page_size)
            if not events:
                return False
            async with self.pool.acquire() as conn:
                known = await store.inbox_event_ids(conn, [e["id"] for e in events])
            for e in events:
                key = tally_key(datetime.fromtimestamp(e["created"], tz=UTC).date(), e["type"])
                t = cp.tallies.setdefault(key, DayTypeTally())
                t.stripe += 1
                if e["id"] not in known:
                    t.missing += 1
                    if cp.listed < req.sample_size:  # ids kept in all: the checkpoint stays small
                        t.missing_ids.append(e["id"])
                        cp.listed += 1
            cp.starting_after = events[-1]["id"]
            return has_more

        await heartbeat_pages(cp, one_page)
        async with self.pool.acquire() as conn:
            rows = await store.inbox_per_day_and_type(
                conn, datetime.fromtimestamp(gte, tz=UTC), datetime.fromtimestamp(lt, tz=UTC),
                type_patterns(req.webhook_types))
        inbox = {tally_key(r["day"], r["type"]): int(r["n"]) for r in rows}
        return policy.webhook_gaps(cp.tallies, inbox, since=since, until=until, sample=req.sample_size)

    @activity.defn(name="checks.usage_without_counter")
    async def usage_without_counter(self, req: CheckRequest) -> CheckResult:
        """Usage of the current and the previous billing period (since the first day of last
        month) with no counter; usage ingested within the grace period is left out (the usage
        sync creates its counter)."""
        first_of_month = req.now.date().replace(day=1)
        since = (first_of_month - timedelta(days=1)).replace(day=1)
        async with self.pool.acquire() as conn:
            total, rows = await store.usage_without_counter(conn, since, req.now - self._grace(req), req.sample_size)
        return policy.usage_without_counter(total, rows, since=since)

    @activity.defn(name="checks.stale_counters")
    async def stale_counters(self, req: CheckRequest) -> CheckResult:
        days = req.stale_counter_days or self.settings.checks_stale_counter_days
        async with self.pool.acquire() as conn:
            total, checked, rows = await store.stale_counters(
                conn, req.now.date(), req.now - timedelta(days=days), days, req.sample_size)
        return policy.stale_counters(total, checked, rows, days=days)

    @activity.defn(name="checks.inbox_backlog")
    async def inbox_backlog(self, req: CheckRequest) -> CheckResult:
        minutes = req.backlog_minutes or self.settings.checks_backlog_minutes
        async with self.pool.acquire() as conn:
            counts, oldest, rows = await store.inbox_backlog(conn, req.now - timedelta(minutes=minutes),
                                                              req.sample_size)
        return policy.inbox_backlog(counts, oldest, rows, minutes=minutes, now=req.now)

    @activity.defn(name="checks.record")
    async def record(self, inp: RecordChecksInput) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await store.record_results(conn, inp)
            async with never_failing(conn, inp.run_id):
                await notices.on_recorded(conn, inp)
