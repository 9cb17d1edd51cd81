"""Stripe and Postgres faults in the middle of an apply (short versions of `python -m bench.chaos`).

- Stripe: the emulator answers ~20% 500s (some *after* the write landed), ~10% 429s and adds
  latency; our client-side limit is 25 ops/s. The run completes, no 429 ever fails an activity
  attempt (the gateway retries them with backoff), and every correction lands exactly once.
- Postgres: a private embedded Postgres is restarted (`pg_ctl restart -m fast`) and then every
  worker connection is dropped (`pg_terminate_backend`) while the page activities write. The run
  completes, with every correction exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import asyncpg
import pytest

from billing.db import create_pool
from common.types import Mode, RunStatus
from devstack.postgres import TempPostgres, restart_postgres
from reconcile.types import ReconcileResult

from .recon_helpers import (
    assert_stripe_equals_ledger,
    make_settings,
    running_worker,
    seed_world,
    start,
)

pytestmark = pytest.mark.integration

STRIPE_FAULTS = [
    {"method": "POST", "path_prefix": "/v1/", "status": 500, "after": True, "probability": 0.08},
    {"path_prefix": "/v1/", "status": 500, "probability": 0.15},
    {"path_prefix": "/v1/", "status": 429, "probability": 0.13},
    {"path_prefix": "/v1/", "status": None, "probability": 1.0, "latency_ms": 20},
]


async def assert_exactly_once(pool: asyncpg.Pool, emulator_admin, n_keys: int) -> None:
    events = await emulator_admin.meter_events()
    ids = Counter(e["identifier"] for e in events)
    assert not {i: n for i, n in ids.items() if n > 1}, "an identifier was accepted twice"
    outbox = await pool.fetch("SELECT identifier, status FROM billing.stripe_usage_pushes")
    assert {r["status"] for r in outbox} <= {"sent", "confirmed"}, Counter(r["status"] for r in outbox)
    assert {r["identifier"] for r in outbox} == set(ids)
    assert len(ids) == n_keys


async def test_stripe_500s_429s_and_latency_every_correction_lands_once(
        clean_db, stripe_client, emulator, emulator_admin, temporal_env, task_queue, postgres_dsn, caplog):
    world = await seed_world(clean_db, stripe_client, n_customers=12, events_per_key=1,
                             meters={"api_requests": "API requests"}, with_counters=False)
    n_keys = len(world.customers) * len(world.days)
    await emulator_admin.configure(rate_limit=25, faults=STRIPE_FAULTS, seed=5)
    settings = make_settings(postgres_dsn, emulator, STRIPE_RATE_LIMIT=25, RECON_PAGE_SIZE=4)
    caplog.set_level(logging.WARNING)
    async with running_worker(temporal_env.client, settings, task_queue):
        handle = await start(temporal_env.client, task_queue, world.request(mode="apply"), f"faults-{world.tag}")
        result: ReconcileResult = await asyncio.wait_for(handle.result(), 120)
    injected = {(f["status"], f["after"]): f["injected"] for f in (await emulator_admin.get_config())["faults"]}
    await emulator_admin.configure(faults=[], rate_limit=0)

    assert result.status == RunStatus.COMPLETED, result
    assert result.counts.reconcile_failures == 0
    assert injected[(429, False)] > 0 and injected[(500, False)] > 0, injected
    # 429s are retried inside the gateway: not one activity attempt failed because of one.
    failed_attempts = [r for r in caplog.records if "Completing activity as failed" in r.getMessage()]
    rate_limited = [r for r in failed_attempts if "RateLimitError" in str(r.exc_info and r.exc_info[1])
                    or "rate limit" in str(r.exc_info and r.exc_info[1]).lower()]
    assert not rate_limited, [str(r.exc_info[1]) for r in rate_limited if r.exc_info]
    await assert_exactly_once(clean_db, emulator_admin, n_keys)
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)


@pytest.fixture
async def private_postgres():
    """An embedded Postgres of this test only (it is restarted), migrated. Yields (dsn, pgdata)."""
    pg = await TempPostgres.start("billing", prefix="billing-test-pg-restart-")
    try:
        yield pg.dsn, pg.pgdata
    finally:
        await pg.close()


async def wait_for_events(emulator_admin, at_least: int, within: float = 60.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (n := len(await emulator_admin.meter_events())) < at_least:
        assert loop.time() < deadline, f"only {n} meter events arrived"
        await asyncio.sleep(0.05)
    return n


async def test_postgres_restart_and_dropped_connections_mid_apply(
        private_postgres, stripe_client, emulator, emulator_admin, temporal_env, task_queue):
    dsn, pgdata = private_postgres
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        world = await seed_world(pool, stripe_client, n_customers=30, events_per_key=1,
                                 meters={"api_requests": "API requests"}, with_counters=False)
        n_keys = len(world.customers) * len(world.days)
        await pool.close()
        # Slow enough (10 pushes/s) that the faults land while pages write.
        settings = make_settings(dsn, emulator, STRIPE_RATE_LIMIT=10, RECON_PAGE_SIZE=5)
        async with running_worker(temporal_env.client, settings, task_queue):
            handle = await start(temporal_env.client, task_queue, world.request(mode="apply"), f"pg-{world.tag}")
            before_restart = await wait_for_events(emulator_admin, 10)
            await asyncio.to_thread(restart_postgres, pgdata)
            before_terminate = await wait_for_events(emulator_admin, before_restart + 20)
            admin = await asyncpg.connect(dsn)
            try:
                dropped = await admin.fetchval(
                    """SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                        WHERE datname = current_database() AND pid <> pg_backend_pid()) t""")
            finally:
                await admin.close()
            result: ReconcileResult = await asyncio.wait_for(handle.result(), 120)
        assert before_terminate < n_keys, "the faults did not land mid-apply"
        assert dropped > 0
        assert result.status == RunStatus.COMPLETED, result
        assert result.counts.reconcile_failures == 0
        pool = await create_pool(dsn, min_size=1, max_size=2)
        await assert_exactly_once(pool, emulator_admin, n_keys)
        await assert_stripe_equals_ledger(pool, stripe_client, world)
        assert Mode.APPLY == result.mode
    finally:
        await pool.close()


async def test_sdk_retries_take_their_own_rate_limit_slot(emulator, emulator_admin, postgres_dsn):
    """The SDK retries a 500 by itself; each retry is a request against the account's limit
    and must wait for the limiter like the first one (else retries burst past the limit and
    come back as 429s)."""
    from aiolimiter import AsyncLimiter

    from billing.stripe_gateway import StripeGateway, make_stripe_client

    class CountingLimiter(AsyncLimiter):
        acquired = 0

        async def acquire(self, amount: float = 1) -> None:
            self.acquired += 1
            await super().acquire(amount)

    limiter = CountingLimiter(1000, 1.0)
    gateway = StripeGateway(make_stripe_client(make_settings(postgres_dsn, emulator)), limiter)
    await emulator_admin.configure(faults=[{"method": "GET", "path_prefix": "/v1/billing/meters", "status": 500,
                                            "probability": 1.0, "max_count": 2}])
    assert await gateway.list_meters() == []
    assert limiter.acquired == 3  # the request and the SDK's 2 retries
