"""The worker: wiring only. Builds the dependencies (asyncpg pool, Stripe client behind one
rate limiter), the activity classes that hold them, and registers every workflow. Telemetry:
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

from activities.credits import CreditActivities
from activities.health import HealthActivities
from activities.operations import OperationsActivities
from activities.resync import ResyncActivities
from activities.stripe_events import StripeEventActivities
from activities.usage import UsageActivities
from billing import correlation, db
from billing.metrics_collector import MetricsCollector
from billing.settings import Settings, get_settings
from billing.stripe_gateway import StripeGateway, make_limiter, make_stripe_client
from billing.telemetry import init_process
from billing.temporal_client import connect, default_interceptors, exit_skipping_finalization
from workflows.adjust_credits import AdjustCredits
from workflows.autoheal_control import AutoHealControl
from workflows.catch_up_backfill import CatchUpBackfill
from workflows.process_stripe_event import ProcessStripeEvent
from workflows.reconcile_usage import ReconcileUsage
from workflows.repair_credits import RepairCredits
from workflows.replay_webhooks import ReplayWebhooks
from workflows.resync_subscriptions import ResyncSubscriptions
from workflows.smoke import Smoke

log = logging.getLogger("billing.worker")

WORKFLOWS = [ReconcileUsage, ProcessStripeEvent, ReplayWebhooks, CatchUpBackfill, AutoHealControl,
             ResyncSubscriptions, RepairCredits, AdjustCredits, Smoke]
GRACEFUL_SHUTDOWN = 30  # seconds given to running activities on SIGTERM
# Heartbeats (and with them cancellations, e.g. from `pause`) reach the server at most this
# late; the SDK's default throttle (80% of the heartbeat timeout) would delay a pause ~24 s.
HEARTBEAT_THROTTLE = timedelta(seconds=2)


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
    gateway = StripeGateway(make_stripe_client(settings), make_limiter(settings.stripe_rate_limit))
    usage = UsageActivities(pool, gateway, settings)
    health = HealthActivities(pool, gateway)
    events = StripeEventActivities(pool, gateway)
    ops = OperationsActivities(pool, client)
    resync = ResyncActivities(pool, gateway, events)
    credits = CreditActivities(pool, gateway, events)
    worker = Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            usage.start_run, usage.reconcile_page, usage.apply_plan_page, usage.set_run_status,
            usage.finish_run, usage.audit, health.check_postgres, health.check_stripe,
            events.process, events.mark_failed, events.sync_inbox, events.pending_page, events.process_page,
            ops.get_autoheal, ops.set_autoheal, ops.broadcast, ops.completed_runs,
            resync.start, resync.cleanup, resync.count_active, resync.subscriptions_page, resync.local_page,
            credits.checkout_page, credits.duplicates, credits.balances_page, credits.paid_invoices_page,
            credits.unpushed_usage, credits.adjust,
        ],
        graceful_shutdown_timeout=timedelta(seconds=GRACEFUL_SHUTDOWN),
        max_concurrent_activities=20,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        interceptors=_missing_interceptors(client),
    )
    stop_collector = asyncio.Event()
    collector = (asyncio.create_task(MetricsCollector(pool, settings).run(stop_collector))
                 if collect_metrics else None)

    async def close() -> None:
        stop_collector.set()
        if collector is not None:
            await collector
        await pool.close()

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
