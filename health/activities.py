"""Smoke-check activities: prove the worker reaches Postgres and Stripe with its real wiring."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from billing.stripe_gateway import StripeGateway
from health.types import SmokeCheck


class HealthActivities:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway) -> None:
        self.pool = pool
        self.stripe = stripe

    @activity.defn(name="health.postgres")
    async def check_postgres(self, check: SmokeCheck) -> SmokeCheck:
        async with self.pool.acquire() as conn:
            versions = await conn.fetchval("SELECT count(*) FROM public.billing_schema_migrations")
            customers = await conn.fetchval("SELECT count(*) FROM billing.customers")
        return check.model_copy(update={"migrations_applied": versions, "customers": customers})

    @activity.defn(name="health.stripe")
    async def check_stripe(self, check: SmokeCheck) -> SmokeCheck:
        meters = await self.stripe.list_meters()
        return check.model_copy(update={"stripe_meters": [m.event_name for m in meters]})
