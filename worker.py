"""The worker: wiring only. Builds the dependencies (asyncpg pool, Stripe client behind one
rate limiter), the activity classes that hold them, and registers every workflow.

Run: `billing-recon worker` or `python -m worker`. SIGTERM/SIGINT drain gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Worker

from activities.credits import CreditActivities
from activities.health import HealthActivities
from activities.resync import ResyncActivities
from activities.stripe_events import StripeEventActivities
from activities.usage import UsageActivities
from billing import db
from billing.settings import Settings, get_settings
from billing.stripe_gateway import StripeGateway, make_limiter, make_stripe_client
from billing.temporal_client import connect, exit_skipping_finalization
from workflows.adjust_credits import AdjustCredits
from workflows.process_stripe_event import ProcessStripeEvent
from workflows.reconcile_usage import ReconcileUsage
from workflows.repair_credits import RepairCredits
from workflows.replay_webhooks import ReplayWebhooks
from workflows.resync_subscriptions import ResyncSubscriptions
from workflows.smoke import Smoke

log = logging.getLogger("billing.worker")

WORKFLOWS = [ReconcileUsage, ProcessStripeEvent, ReplayWebhooks, Smoke, ResyncSubscriptions, RepairCredits,
             AdjustCredits]
GRACEFUL_SHUTDOWN = 30  # seconds given to running activities on SIGTERM
# Heartbeats (and with them cancellations, e.g. from `pause`) reach the server at most this
# late; the SDK's default throttle (80% of the heartbeat timeout) would delay a pause ~24 s.
HEARTBEAT_THROTTLE = timedelta(seconds=2)


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from starter.stack import resolve_database_url  # the local stack's embedded Postgres

    return resolve_database_url(settings)


async def build_worker(client: Client, settings: Settings, *, task_queue: str | None = None):
    """Returns (worker, close) where close() releases the dependencies."""
    pool = await db.create_pool(
        database_url(settings), min_size=settings.database_pool_min, max_size=settings.database_pool_max)
    gateway = StripeGateway(make_stripe_client(settings), make_limiter(settings.stripe_rate_limit))
    usage = UsageActivities(pool, gateway, settings)
    health = HealthActivities(pool, gateway)
    events = StripeEventActivities(pool, gateway)
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
            resync.start, resync.cleanup, resync.count_active, resync.subscriptions_page, resync.local_page,
            credits.checkout_page, credits.duplicates, credits.balances_page, credits.paid_invoices_page,
            credits.unpushed_usage, credits.adjust,
        ],
        graceful_shutdown_timeout=timedelta(seconds=GRACEFUL_SHUTDOWN),
        max_concurrent_activities=20,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )

    async def close() -> None:
        await pool.close()

    return worker, close


async def run(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    client = await connect(interceptors=[TracingInterceptor()])
    worker, close = await build_worker(client, settings)
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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # One line per HTTP request is noise at this volume.
    for noisy in ("stripe", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(run())
    exit_skipping_finalization(0)


if __name__ == "__main__":
    main()
