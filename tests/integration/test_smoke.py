"""The Smoke workflow through the real worker: it reaches Postgres and the Stripe emulator."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, RetryState

import worker as worker_module
from billing.settings import Settings
from health.types import SmokeCheck

pytestmark = pytest.mark.integration


def settings_for(postgres_dsn: str, stripe_api_base: str) -> Settings:
    return Settings(DATABASE_URL=postgres_dsn, STRIPE_API_BASE=stripe_api_base, STRIPE_API_KEY="sk_test_123",
                    STRIPE_RATE_LIMIT=0, DATABASE_POOL_MAX=2, STRIPE_MAX_NETWORK_RETRIES=0)


async def test_smoke_touches_postgres_and_stripe(temporal_env, postgres_dsn, clean_db, emulator, stripe_client,
                                                 task_queue):
    for name in ("api_requests", "storage_gb_hours"):
        await stripe_client.v1.billing.meters.create_async(params={
            "display_name": name, "event_name": name, "default_aggregation": {"formula": "sum"}})
    await clean_db.execute("INSERT INTO billing.customers (customer_id) VALUES ('a'), ('b'), ('c')")
    versions = await clean_db.fetchval("SELECT count(*) FROM public.billing_schema_migrations")

    w, close = await worker_module.build_worker(temporal_env.client, settings_for(postgres_dsn, emulator),
                                                task_queue=task_queue)
    try:
        async with w:
            check = await asyncio.wait_for(temporal_env.client.execute_workflow(
                "Smoke", SmokeCheck(), id=f"smoke-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                result_type=SmokeCheck), 60)
    finally:
        await close()
    assert check.migrations_applied == versions >= 1
    assert check.customers == 3
    assert sorted(check.stripe_meters) == ["api_requests", "storage_gb_hours"]


async def test_smoke_fails_when_stripe_is_unreachable(temporal_env, postgres_dsn, clean_db, task_queue):
    from devstack.processes import free_port

    settings = settings_for(postgres_dsn, f"http://127.0.0.1:{free_port()}")  # nothing listens
    w, close = await worker_module.build_worker(temporal_env.client, settings, task_queue=task_queue)
    try:
        async with w:
            handle = await temporal_env.client.start_workflow(
                "Smoke", SmokeCheck(), id=f"smoke-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                result_type=SmokeCheck)
            # The Stripe activity is tried a few times, then the workflow fails with the cause:
            # a smoke check never hangs and never pretends success.
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), 60)
            cause = failure.value.cause
            assert isinstance(cause, ActivityError)
            assert cause.activity_type == "health.stripe"
            assert cause.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    finally:
        await close()
