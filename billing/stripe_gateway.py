"""The one way this project talks to Stripe: the official SDK's StripeClient, behind one
client-side rate limiter shared by every call of the process and, with STRIPE_BUDGET=shared, the
budget shared by every worker (billing/budget.py). Translates Stripe's answers into
outcomes the reconciler can act on; transient failures (429, 5xx, network) are raised so that
Temporal retries the activity.

Instrumented: every call is a span (`stripe.<operation>`); every HTTP request, the SDK's own
retries included, is counted by operation and HTTP status (`billing_stripe_requests_total`), and
every retry by reason (`billing_stripe_retries_total`)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import stripe
from aiolimiter import AsyncLimiter
from temporalio.exceptions import ApplicationError

from billing import metrics
from billing.budget_lane import ProcessLanes
from billing.settings import Settings
from billing.stripe_health import HEALTH, ErrorReason
from billing.telemetry import stripe_span

if TYPE_CHECKING:
    from billing.budget import StripeBudget
    from billing.budget_lane import BudgetLane


@dataclass
class _CallState:
    operation: str
    requests: int = 0
    slot: Callable[[], Awaitable[None]] | None = None  # waits for one more request's slot


# The gateway call in progress (set by StripeGateway._call): names the HTTP requests it makes.
_call_state: contextvars.ContextVar[_CallState | None] = contextvars.ContextVar("stripe_call", default=None)


class InstrumentedHTTPXClient(stripe.HTTPXClient):
    """The SDK's httpx transport, counting every HTTP request (each SDK retry is one) by the
    gateway operation that made it and its HTTP status. An SDK retry (after a 5xx or a
    connection error) is one more request against the account's rate limit: it waits for its
    own slot of the gateway's limiter (the first request got one from the gateway)."""

    async def request_async(self, method, url, headers, post_data=None):
        state = _call_state.get()
        operation = state.operation if state else "other"
        if state is not None:
            state.requests += 1
            if state.requests > 1:
                metrics.record_stripe_retry(operation, "sdk")
                if state.slot is not None:
                    await state.slot()
        started = time.monotonic()
        try:
            content, status, response_headers = await super().request_async(
                method, url, headers, post_data)
        except stripe.APIConnectionError:
            metrics.record_stripe_request(operation, "network_error", time.monotonic() - started)
            HEALTH.record_status(None)
            raise
        metrics.record_stripe_request(operation, str(status), time.monotonic() - started)
        HEALTH.record_status(status)
        return content, status, response_headers

log = logging.getLogger(__name__)


def make_stripe_client(settings: Settings) -> stripe.StripeClient:
    base = settings.stripe_api_base.rstrip("/")
    return stripe.StripeClient(
        api_key=settings.stripe_api_key,
        base_addresses={"api": base, "meter_events": base},
        max_network_retries=settings.stripe_max_network_retries,
        http_client=InstrumentedHTTPXClient(timeout=settings.stripe_timeout_seconds),
    )


def make_limiter(rate_per_second: float) -> AsyncLimiter | None:
    if rate_per_second <= 0:
        return None
    # Burst of one second's worth, like Stripe's own bucket.
    return AsyncLimiter(max_rate=rate_per_second, time_period=1.0)


# 429s retried inside one call (backoff 0.25 s doubling to 4 s with jitter, 25-50 s in all): the
# account's limit is shared, so a run of 429s under load must not fail the activity attempt.
RATE_LIMIT_RETRIES = 10


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
    def __init__(self, client: stripe.StripeClient, limiter: AsyncLimiter | None,
                 budget: StripeBudget | None = None) -> None:
        self._client = client
        self._limiter = limiter  # this process's ceiling (STRIPE_RATE_LIMIT)
        self._budget = budget  # every worker's: the account's and each endpoint's (billing/budget.py)
        # 429s answered by Stripe and retried here (each one is logged): a limiter sized right
        # keeps this at zero.
        self.rate_limit_retries = 0
        self._lanes = ProcessLanes()  # lanes when there is no shared budget

    async def _slot(self, operation: str, lane: BudgetLane | None = None) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()
        if self._budget is not None:
            await self._budget.slot(operation, lane)
        elif lane is not None:
            await self._lanes.acquire(lane, operation)

    async def _call(self, operation: str, fn, *args, lane: BudgetLane | None = None, **kwargs):
        """One Stripe call under the limiter. A 429 (another process shares the account's
        limit) is retried here with backoff before it fails the activity."""
        with stripe_span(operation) as span:
            for attempt in range(RATE_LIMIT_RETRIES):
                await self._slot(operation, lane)
                token = _call_state.set(_CallState(operation, slot=partial(self._slot, operation, lane)))
                try:
                    return await fn(*args, **kwargs)
                except stripe.RateLimitError:
                    self.rate_limit_retries += 1
                    if attempt == RATE_LIMIT_RETRIES - 1:
                        HEALTH.record_error(ErrorReason.RATE_LIMITED)  # the circuit counts it
                        raise
                    log.warning("Stripe answered 429 (rate limited) to %s; retry %d of %d", operation,
                                attempt + 1, RATE_LIMIT_RETRIES - 1)
                    metrics.record_stripe_retry(operation, "rate_limited")
                    span.add_event("rate_limited", {"attempt": attempt + 1})
                    await asyncio.sleep(min(0.25 * 2**attempt, 4.0) * (1 + random.random()))
                except (stripe.AuthenticationError, stripe.PermissionError) as e:
                    # A wrong or restricted key: retrying cannot help, fail the run with the cause.
                    raise ApplicationError(
                        f"Stripe refused the API key: {e.user_message or e}", type="StripeAuthentication",
                        non_retryable=True) from e
                finally:
                    _call_state.reset(token)

    async def list_meters(self) -> list[Meter]:
        meters: list[Meter] = []
        params: dict = {"limit": 100}
        while True:
            page = await self._call("list_meters", self._client.v1.billing.meters.list_async, params=params)
            for m in page.data:
                meters.append(Meter(m.id, m.event_name, m.status, m.default_aggregation.formula))
            if not page.has_more or not page.data:
                return meters
            params = {"limit": 100, "starting_after": page.data[-1].id}

    async def probe(self) -> None:
        """The circuit breaker's half-open probe: the cheapest read there is (one meter, one
        page). Raises what Stripe's answer raises."""
        await self._call("probe", self._client.v1.billing.meters.list_async, params={"limit": 1})

    async def daily_summaries(
        self, meter_id: str, stripe_customer_id: str, start: date, end_inclusive: date,
        lane: BudgetLane | None = None,
    ) -> dict[date, Decimal]:
        """Stripe's value per UTC day in [start, end_inclusive] (missing = 0), read in `lane`."""
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
            resp = await self._call("meter_event_summaries", self._client.raw_request_async, "get", url,
                                    lane=lane, **params)
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
                "create_meter_event", self._client.v1.billing.meter_events.create_async,
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
                "cancel_meter_event", self._client.v1.billing.meter_event_adjustments.create_async,
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

    # ------------------------------------------------------------------ invoice adjustments

    async def create_adjustment(self, kind: str, *, identifier: str, customer: str, invoice: str,
                                amount: int, currency: str, description: str, paid_invoice: bool,
                                metadata: dict[str, str]) -> str:
        """One invoice adjustment (reconcile/adjustments.py), its Idempotency-Key the outbox
        identifier: an invoice item for the customer's next invoice, a credit note on `invoice`
        (a paid one credited to the customer's balance) or a customer balance credit. Returns
        the Stripe object's id."""
        opts = {"idempotency_key": f"invoice-adjustment-{identifier}"}
        v1 = self._client.v1
        if kind == "invoice_item":
            obj = await self._call("create_invoice_item", v1.invoice_items.create_async, params={
                "customer": customer, "amount": amount, "currency": currency, "description": description,
                "metadata": metadata}, options=opts)
        elif kind == "credit_note":
            params: dict[str, Any] = {
                "invoice": invoice, "memo": description, "metadata": metadata, "reason": "order_change",
                "lines": [{"type": "custom_line_item", "unit_amount": amount, "quantity": 1,
                           "description": description}]}
            if paid_invoice:
                params["credit_amount"] = amount
            obj = await self._call("create_credit_note", v1.credit_notes.create_async, params=params, options=opts)
        else:
            obj = await self._call("create_customer_balance_transaction",
                                   v1.customers.balance_transactions.create_async, customer, params={
                                       "amount": -amount, "currency": currency, "description": description,
                                       "metadata": metadata}, options=opts)
        return str(obj.id)

    # ------------------------------------------------------------------ objects and events

    async def retrieve_v2_event(self, event_id: str) -> dict | None:
        """The full v2 event (with `data`) a thin notification names; None when Stripe has no
        such event (404)."""
        try:
            resp = await self._call("retrieve_v2_event", self._client.raw_request_async, "get",
                                    f"/v2/core/events/{quote(event_id, safe='')}")
        except stripe.InvalidRequestError as e:
            if e.http_status == 404:
                return None
            raise
        return dict(resp.data)

    async def retrieve(self, kind: str, object_id: str) -> dict | None:
        """The current state of a Stripe object as a plain dict; None when Stripe has no such
        object (404). `kind`: customer, subscription, invoice, checkout.session or price."""
        resources: dict[str, Any] = {
            "customer": self._client.v1.customers,
            "subscription": self._client.v1.subscriptions,
            "invoice": self._client.v1.invoices,
            "checkout.session": self._client.v1.checkout.sessions,
            "price": self._client.v1.prices,
        }
        # Tiered prices come with their tiers (the mirror prices invoice adjustments).
        params = {"subscription": {"expand": ["items.data.price.tiers"]},
                  "price": {"expand": ["tiers"]}}.get(kind)
        try:
            obj = await self._call(f"retrieve_{kind.replace('.', '_')}", resources[kind].retrieve_async, object_id,
                                   params=params)
        except stripe.InvalidRequestError as e:
            if e.http_status == 404:
                return None
            raise
        return obj.to_dict(for_json=True)  # as on the wire: decimals stay strings

    async def list_events_page(
        self, *, created_gte: int, created_lt: int, types: list[str], starting_after: str | None,
        limit: int = 100,
    ) -> tuple[list[dict], bool]:
        """One page of /v1/events in the window, newest first (Stripe's order)."""
        params: dict = {"created": {"gte": created_gte, "lt": created_lt}, "limit": limit}
        if len(types) == 1:
            params["type"] = types[0]  # the only form that takes a `*` wildcard
        elif types:
            params["types"] = types
        if starting_after:
            params["starting_after"] = starting_after
        page = await self._call("list_events", self._client.v1.events.list_async, params=params)
        return [e.to_dict(for_json=True) for e in page.data], bool(page.has_more)

    async def list_subscriptions_page(
        self, *, customer: str | None, starting_after: str | None, limit: int = 100, status: str = "all",
    ) -> tuple[list[dict], bool]:
        """One page of /v1/subscriptions, newest first: with every status by default (`status=all`:
        canceled included; Stripe's default leaves canceled ones out), or in one status."""
        params: dict = {"status": status, "limit": limit}
        if customer:
            params["customer"] = customer
        if starting_after:
            params["starting_after"] = starting_after
        page = await self._call("list_subscriptions", self._client.v1.subscriptions.list_async, params=params)
        return [s.to_dict(for_json=True) for s in page.data], bool(page.has_more)

    async def list_invoices_page(
        self, *, status: str | None, customer: str | None, starting_after: str | None, limit: int = 100,
        created_gte: int | None = None,
    ) -> tuple[list[dict], bool]:
        """One page of /v1/invoices, newest first: in one status, or every status (None; Stripe
        lists drafts, open, paid, uncollectible and void invoices, never deleted drafts); only
        those created at or after `created_gte` (unix seconds) when given."""
        params: dict = {"limit": limit}
        if status:
            params["status"] = status
        if created_gte is not None:
            params["created"] = {"gte": created_gte}
        if customer:
            params["customer"] = customer
        if starting_after:
            params["starting_after"] = starting_after
        page = await self._call("list_invoices", self._client.v1.invoices.list_async, params=params)
        return [i.to_dict(for_json=True) for i in page.data], bool(page.has_more)

    async def list_checkout_sessions_page(
        self, *, customer: str, starting_after: str | None = None, limit: int = 100,
    ) -> tuple[list[dict], bool]:
        """One page of a customer's Checkout Sessions (every status), newest first."""
        params: dict = {"customer": customer, "limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        page = await self._call("list_checkout_sessions", self._client.v1.checkout.sessions.list_async, params=params)
        return [s.to_dict(for_json=True) for s in page.data], bool(page.has_more)
    async def list_created_page(
        self, kind: str, *, created_gte: int, created_lt: int, starting_after: str | None, limit: int = 100,
    ) -> tuple[list[dict], bool]:
        """One page, newest first, of the objects of `kind` (invoice, invoice_payment, refund or
        balance_transaction) created in [created_gte, created_lt) (unix seconds)."""
        resources: dict[str, Any] = {
            "invoice": self._client.v1.invoices,
            "invoice_payment": self._client.v1.invoice_payments,
            "refund": self._client.v1.refunds,
            "balance_transaction": self._client.v1.balance_transactions,
        }
        params: dict = {"created": {"gte": created_gte, "lt": created_lt}, "limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        page = await self._call(f"list_{kind}s", resources[kind].list_async, params=params)
        return [o.to_dict(for_json=True) for o in page.data], bool(page.has_more)
