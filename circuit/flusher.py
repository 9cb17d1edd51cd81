"""Each worker adds the Stripe outcomes it saw (billing.stripe_health) to Postgres every few
seconds, where the StripeCircuit workflow sums every worker's."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import asyncpg

from billing.settings import Settings
from billing.stripe_health import HEALTH
from circuit import store

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def flush_once(pool: asyncpg.Pool, worker: str) -> None:
    tally = HEALTH.drain()
    if not tally.requests and not tally.errors:
        return
    try:
        await store.add_tally(pool, worker, tally)
    except BaseException:
        HEALTH.restore(tally)  # counted at the next flush
        raise


async def run_flusher(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> None:
    """Flush until `stop` is set, and once more then. A failed flush is logged; its figures wait
    for the next one."""
    worker = worker_name()
    while True:
        stopping = stop.is_set()
        try:
            await flush_once(pool, worker)
        except Exception:
            log.exception("flushing Stripe outcomes for the circuit breaker failed")
        if stopping:
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.stripe_circuit_flush_seconds)
        except TimeoutError:
            pass
