"""The worker: wiring only. Builds the dependencies (asyncpg pool, Stripe client behind one
rate limiter) and registers what every job package exports (`workflows/`, `activities/`). Telemetry:
logs, traces and the metrics endpoint (`billing.telemetry`), the Postgres-derived gauges
(`billing.metrics_collector`).

Run: `billing-recon worker` or `python -m worker`. SIGTERM/SIGINT drain gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from activities import all_activities
from billing import correlation, db
from billing.budget import StripeBudget
from billing.metrics_collector import MetricsCollector
from billing.settings import Settings, get_settings
from billing.stripe_gateway import StripeGateway, make_limiter, make_stripe_client
from billing.telemetry import init_process
from circuit import control as circuit_control
from circuit.flusher import run_flusher
from common.client import connect, default_interceptors, exit_skipping_finalization
from common.deps import Dependencies
from notify import control as notify_control
from workflows import all_workflows

log = logging.getLogger("billing.worker")

GRACEFUL_SHUTDOWN = 30  # seconds given to running activities on SIGTERM
# Heartbeats (and with them cancellations, e.g. from `pause`) reach the server at most this
# late; the SDK's default throttle (80% of the heartbeat timeout) would delay a pause ~24 s.
HEARTBEAT_THROTTLE = timedelta(seconds=2)
# Connections of the Stripe budget's own pool (its calls are serialised by one row lock anyway).
BUDGET_POOL_SIZE = 2


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from billing.database_url import resolve_database_url  # or the local stack's database

    return resolve_database_url(settings)


def _missing_interceptors(client: Client) -> list[Interceptor]:
    """Our worker interceptors the client does not already carry (a test's plain client):
    the worker applies the client's own worker interceptors itself, so none runs twice."""
    have = {type(i) for i in client.config()["interceptors"]}
    return [i for i in default_interceptors() if type(i) not in have and isinstance(i, Interceptor)]


async def build_worker(client: Client, settings: Settings, *, task_queue: str | None = None,
                       collect_metrics: bool = False):
    """Returns (worker, close) where close() releases the dependencies. `collect_metrics`:
    also refresh the Postgres-derived gauges until close()."""
    pool = await db.create_pool(
        database_url(settings), min_size=settings.database_pool_min, max_size=settings.database_pool_max)
    # The budget has its own two connections: callers hold pool connections (a key's lock, a
    # snapshot) while they wait for a Stripe slot, so with slots taken from the same pool a
    # small DATABASE_POOL_MAX could leave every connection waiting for one more (a deadlock).
    budget_pool = await db.create_pool(database_url(settings), min_size=1, max_size=BUDGET_POOL_SIZE) \
        if settings.stripe_budget == "shared" else None
    budget = StripeBudget(budget_pool) if budget_pool is not None else None
    gateway = StripeGateway(make_stripe_client(settings), make_limiter(settings.stripe_rate_limit), budget)
    deps = Dependencies(pool=pool, stripe=gateway, settings=settings, temporal=client)
    worker = Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=all_workflows(),
        activities=all_activities(deps),
        graceful_shutdown_timeout=timedelta(seconds=GRACEFUL_SHUTDOWN),
        max_concurrent_activities=20,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        interceptors=_missing_interceptors(client),
    )
    stop_collector = asyncio.Event()
    collector = (asyncio.create_task(MetricsCollector(pool, settings).run(stop_collector))
                 if collect_metrics else None)
    # This worker's Stripe outcomes, for the circuit breaker (circuit/flusher.py).
    flusher = asyncio.create_task(run_flusher(pool, settings, stop_collector))

    async def close() -> None:
        stop_collector.set()
        if collector is not None:
            await collector
        await flusher
        await pool.close()
        if budget_pool is not None:
            await budget_pool.close()

    return worker, close


async def run(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    correlation.set_current(None)  # ids come with each workflow and activity, not the process
    telemetry = init_process(settings, "worker")
    client = await connect(runtime=telemetry.runtime)
    worker, close = await build_worker(client, settings, collect_metrics=telemetry.runtime is not None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with worker:
            log.warning("worker started on task queue %s", settings.task_queue)
            # The deployment's singletons (one per task queue; already running: left as they are).
            await notify_control.ensure_running(client, settings.task_queue)
            await circuit_control.ensure_running(client, settings.task_queue)
            await stop.wait()
            log.warning("shutting down: draining running activities")
    finally:
        await close()
        telemetry.shutdown()


def main() -> None:
    asyncio.run(run())
    exit_skipping_finalization(0)


if __name__ == "__main__":
    main()
