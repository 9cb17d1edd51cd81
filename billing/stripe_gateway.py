"""The one way this project talks to Stripe: the official SDK's StripeClient, behind one
client-side rate limiter shared by every call of the process. Translates Stripe's answers into
outcomes the reconciler can act on; transient failures (429, 5xx, network) are raised so that
Temporal retries the activity."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from urllib.parse import quote

import stripe
from aiolimiter import AsyncLimiter
from temporalio.exceptions import ApplicationError

from billing.settings import Settings

log = logging.getLogger(__name__)


def make_stripe_client(settings: Settings) -> stripe.StripeClient:
    base = settings.stripe_api_base.rstrip("/")
    return stripe.StripeClient(
        api_key=settings.stripe_api_key,
        base_addresses={"api": base, "meter_events": base},
        max_network_retries=settings.stripe_max_network_retries,
        http_client=stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds),
    )


def make_limiter(rate_per_second: float) -> AsyncLimiter | None:
    if rate_per_second <= 0:
        return None
    # Burst of one second's worth, like Stripe's own bucket.
    return AsyncLimiter(max_rate=rate_per_second, time_period=1.0)


RATE_LIMIT_RETRIES = 6


class PushOutcome(StrEnum):
    SENT = "sent"
    ALREADY_SENT = "already_sent"  # Stripe already holds this identifier: our earlier send landed
    TOO_OLD = "too_old"  # outside the 35-day window
    REJECTED = "rejected"  # any other 4xx: retrying cannot help


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    TOO_OLD = "too_old"  # Stripe only cancels events received within 24 h
    NOT_FOUND = "not_found"  # Stripe never received it: nothing to take back
    REJECTED = "rejected"


@dataclass(frozen=True)
class Meter:
    id: str
    event_name: str
    status: str
    formula: str


class StripeGateway:
    def __init__(self, client: stripe.StripeClient, limiter: AsyncLimiter | None) -> None:
        self._client = client
        self._limiter = limiter
        # 429s answered by Stripe and retried here (each one is logged): a limiter sized right
        # keeps this at zero.
        self.rate_limit_retries = 0

    async def _slot(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()

    async def _call(self, fn, *args, **kwargs):
        """One Stripe call under the limiter. A 429 (another process shares the account's
        limit) is retried here with backoff before it fails the activity."""
        for attempt in range(RATE_LIMIT_RETRIES):
            await self._slot()
            try:
                return await fn(*args, **kwargs)
            except stripe.RateLimitError:
                self.rate_limit_retries += 1
                if attempt == RATE_LIMIT_RETRIES - 1:
                    raise
                log.warning("Stripe answered 429 (rate limited); retry %d of %d", attempt + 1,
                            RATE_LIMIT_RETRIES - 1)
                await asyncio.sleep(min(0.25 * 2**attempt, 4.0) * (1 + random.random()))
            except (stripe.AuthenticationError, stripe.PermissionError) as e:
                # A wrong or restricted key: retrying cannot help, fail the run with the cause.
                raise ApplicationError(
                    f"Stripe refused the API key: {e.user_message or e}", type="StripeAuthentication",
                    non_retryable=True) from e

    async def list_meters(self) -> list[Meter]:
        meters: list[Meter] = []
        params: dict = {"limit": 100}
        while True:
            page = await self._call(self._client.v1.billing.meters.list_async, params=params)
            for m in page.data:
                meters.append(Meter(m.id, m.event_name, m.status, m.default_aggregation.formula))
            if not page.has_more or not page.data:
                return meters
            params = {"limit": 100, "starting_after": page.data[-1].id}

    async def daily_summaries(
        self, meter_id: str, stripe_customer_id: str, start: date, end_inclusive: date
    ) -> dict[date, Decimal]:
        """Stripe's aggregated value per UTC day in [start, end_inclusive]; missing days = 0."""
        start_ts = int(datetime.combine(start, datetime.min.time(), tzinfo=UTC).timestamp())
        end_ts = int(
            datetime.combine(end_inclusive + timedelta(days=1), datetime.min.time(), tzinfo=UTC).timestamp()
        )
        out: dict[date, Decimal] = {}
        params: dict = {
            "customer": stripe_customer_id, "start_time": start_ts, "end_time": end_ts,
            "value_grouping_window": "day", "limit": 100,
        }
        # The one hot call of a reconciliation (one per customer and meter). Read through the
        # SDK's raw_request: the same request, retries and error classes as
        # `meters.event_summaries.list_async`, without building a StripeObject per summary
        # (about a tenth of the worker's CPU at full speed, measured with bench/reconcile).
        url = f"/v1/billing/meters/{quote(meter_id, safe='')}/event_summaries"
        while True:
            resp = await self._call(self._client.raw_request_async, "get", url, **params)
            page = resp.data
            data = page.get("data") or []
            for s in data:
                day = datetime.fromtimestamp(s["start_time"], tz=UTC).date()
                out[day] = out.get(day, Decimal(0)) + Decimal(str(s["aggregated_value"]))
            if not page.get("has_more") or not data:
                return out
            params = {**params, "starting_after": data[-1]["id"]}

    async def push_meter_event(
        self, *, identifier: str, event_name: str, stripe_customer_id: str, value: str,
        timestamp: datetime,
    ) -> tuple[PushOutcome, str]:
        try:
            await self._call(
                self._client.v1.billing.meter_events.create_async,
                params={
                    "event_name": event_name,
                    "identifier": identifier,
                    "timestamp": int(timestamp.timestamp()),
                    "payload": {"stripe_customer_id": stripe_customer_id, "value": value},
                },
                # SDK retries of this very request replay Stripe's saved answer.
                options={"idempotency_key": f"meter-event-{identifier}"},
            )
            return PushOutcome.SENT, ""
        except stripe.InvalidRequestError as e:
            msg = e.user_message or str(e)
            if e.code == "resource_already_exists" or ("already exists" in msg and "identifier" in msg):
                return PushOutcome.ALREADY_SENT, msg
            if "35 days" in msg or "too far in the past" in msg:
                return PushOutcome.TOO_OLD, msg
            return PushOutcome.REJECTED, msg

    async def cancel_meter_event(self, *, identifier: str, event_name: str) -> tuple[CancelOutcome, str]:
        try:
            await self._call(
                self._client.v1.billing.meter_event_adjustments.create_async,
                params={"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}},
                options={"idempotency_key": f"meter-event-cancel-{identifier}"},
            )
            return CancelOutcome.CANCELLED, ""
        except stripe.InvalidRequestError as e:
            msg = e.user_message or str(e)
            if e.code == "meter_event_adjustment_window_expired" or "within the last 24 hours" in msg:
                return CancelOutcome.TOO_OLD, msg
            if e.code == "resource_missing" and "identifier" in msg:
                return CancelOutcome.NOT_FOUND, msg
            if "already" in msg.lower() and "cancel" in msg.lower():
                return CancelOutcome.CANCELLED, msg
            return CancelOutcome.REJECTED, msg
