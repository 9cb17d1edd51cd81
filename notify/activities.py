"""Notification activities (Postgres, HTTP to the targets, the Temporal client to wake the
dispatcher)."""

from __future__ import annotations

import logging

import asyncpg
import httpx
from temporalio import activity
from temporalio.client import Client

from billing.settings import Settings
from common.heartbeat import Heartbeater
from notify import outbox, sweeps
from notify.targets import Request, requests_for, send
from notify.types import (
    DeliverInput,
    DeliverResult,
    EmitResult,
    Notification,
    WakeRequest,
    dispatcher_id,
)

log = logging.getLogger(__name__)


class NotifyActivities:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, client: Client) -> None:
        self.pool = pool
        self.settings = settings
        self.client = client

    @activity.defn(name="notify.emit")
    async def emit(self, n: Notification) -> EmitResult:
        """Record a notification (once per subject and kind) and wake the dispatcher."""
        recorded = await outbox.emit(self.pool, n)
        if recorded:
            try:
                await self.client.get_workflow_handle(dispatcher_id(self.settings.task_queue)).signal(
                    "wake", WakeRequest(reason=n.kind.value))
            except Exception as e:  # not running yet: its next round finds the row all the same
                log.info("notification dispatcher not woken (%s); it will find the notification", e)
        return EmitResult(recorded=recorded)

    @activity.defn(name="notify.deliver_due")
    async def deliver_due(self, inp: DeliverInput) -> DeliverResult:
        """Sweep for stuck runs and long pauses, then deliver every due notification. A target
        that fails is retried later with backoff (recorded on the row), never holding the others
        back; this activity fails only when Postgres does."""
        result = DeliverResult(poll_seconds=self.settings.notify_poll_seconds)
        async with self.pool.acquire() as conn:
            result.emitted = await sweeps.sweep(conn, self.settings)
            result.emitted += await sweeps.failed_job_runs(
                conn, self.client, self.settings, activity.info().workflow_namespace or "default")
        rows = await outbox.claim_due(self.pool, inp.limit)
        if not rows:
            return result
        async with httpx.AsyncClient(timeout=self.settings.notify_timeout_seconds) as http, \
                Heartbeater(result) as hb:
            async def post(req: Request) -> None:
                await send(http, req)

            for row in rows:
                status = await outbox.deliver_row(
                    self.pool, row, lambda n, eid: requests_for(self.settings, n, eid), post,
                    self.settings.notify_max_attempts)
                hb.record(outbox.tally(result, status))
        return result
