"""Webhook delivery: signed POSTs from background asyncio tasks, with retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx

from .state import Store

log = logging.getLogger("stripe_emulator.webhooks")


def sign(payload: str, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header value for ``payload``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookDeliverer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.client: httpx.AsyncClient | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.log: list[dict[str, Any]] = []
        store.listeners.append(self.on_event)

    async def start(self) -> None:
        self.client = httpx.AsyncClient()

    async def stop(self) -> None:
        await self.cancel_all()
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def cancel_all(self) -> None:
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self.log.clear()

    def on_event(self, item: dict[str, Any]) -> None:
        if self.store.config.drop_webhooks:
            return  # outage: never attempted, never resent; pending_webhooks stays > 0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for we_id in item["endpoints"]:
            rate = self.store.config.webhook_drop_rate
            if rate and self.store.rng.random() < rate:
                self.log.append({"event": item["event"]["id"], "type": item["event"]["type"],
                                 "endpoint": we_id, "attempt": 0, "status": None,
                                 "error": "dropped", "ok": False, "at": self.store.now()})
                continue
            task = loop.create_task(self._deliver(item["event"], we_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _endpoint(self, we_id: str) -> dict[str, Any] | None:
        """A v1 webhook endpoint (``we_``) or a v2 event destination (``ed_``)."""
        kind = "v2.core.event_destination" if we_id.startswith("ed_") else "webhook_endpoint"
        return self.store.col(kind).objects.get(we_id)

    async def _deliver(self, event: dict[str, Any], we_id: str) -> None:
        schedule = [0.0, *self.store.config.webhook_retry_schedule_seconds]
        for attempt, delay in enumerate(schedule, start=1):
            if delay:
                await asyncio.sleep(delay)
            if self.store.config.drop_webhooks:
                return
            endpoint = self._endpoint(we_id)
            secret = self.store.webhook_secrets.get(we_id)
            if endpoint is None or secret is None or endpoint["status"] != "enabled":
                return
            body = json.dumps(event, indent=2)
            ts = (
                self.store.now()
                if self.store.config.webhook_signature_clock == "emulator"
                else int(time.time())
            )
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": sign(body, secret, ts),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            }
            status: int | None = None
            error: str | None = None
            try:
                assert self.client is not None
                resp = await self.client.post(
                    endpoint["url"] if "url" in endpoint else endpoint["webhook_endpoint"]["url"],
                    content=body.encode(),
                    headers=headers,
                    timeout=self.store.config.webhook_timeout_seconds,
                )
                status = resp.status_code
            except (httpx.HTTPError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            ok = status is not None and 200 <= status < 300
            self.log.append(
                {
                    "event": event["id"],
                    "type": event["type"],
                    "endpoint": we_id,
                    "attempt": attempt,
                    "status": status,
                    "error": error,
                    "ok": ok,
                    "at": self.store.now(),
                }
            )
            if ok:
                if "pending_webhooks" in event:  # thin notifications have none
                    event["pending_webhooks"] = max(0, event["pending_webhooks"] - 1)
                self.store.changes += 1
                return
            log.info(
                "webhook %s to %s failed (attempt %d): %s",
                event["id"],
                we_id,
                attempt,
                status or error,
            )
