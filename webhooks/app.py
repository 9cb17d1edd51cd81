"""The Stripe webhook receiver: verify, store durably, start processing, then answer.

Order matters, and is the point of this module:
0. The body is read within limits (`webhooks.limits`): too large (413) or too slow (408) is
   refused while it streams in, and the connection is closed.
1. `Stripe-Signature` is verified by the SDK (tolerance 300 s) before anything is stored: a
   forged, stale, future-dated or missing signature gets 400 and leaves no row.
2. The event is checked (`webhooks.events.parse_event`): anything the inbox could never store
   (a NUL character, a `created` out of range, an oversized id, wrong types, deep nesting) is
   400 and leaves no row. Then the raw event goes into `billing.stripe_events`
   (insert-if-absent). If Postgres is down the answer is 503 and Stripe retries: we never
   answer 2xx for an event we could lose, and never 503 for one no retry can store.
Thin events from an event destination (async meter errors) have their own route and rules:
`webhooks/meter_errors.py`.
3. `ProcessStripeEvent` starts with id `stripe-event-<evt id>`; a duplicate delivery finds it
   running (no-op). If Temporal is unreachable the event is still stored and answered 200: the
   replay sweep processes inbox rows stuck in `received`.
Nothing is marked "seen" before it is processed: the inbox status changes only in the handler's
transaction, so Stripe's own retries keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta

import asyncpg
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.runtime import Runtime

from billing import correlation, db, metrics
from billing.budget import StripeBudget
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway, make_limiter, make_stripe_client
from circuit.flusher import run_flusher
from common.client import connect
from webhooks import limits, meter_errors
from webhooks.activities import DONE, store_event_args, store_event_sql
from webhooks.events import (
    is_permanent_store_error,
    is_transient_store_error,
    parse_event,
    signature_timestamp,
)
from webhooks.process_workflow import workflow_id_for
from webhooks.types import ProcessEventInput

log = logging.getLogger("billing.webhooks")

PATH = "/webhooks/stripe"
PROCESS_WORKFLOW = "ProcessStripeEvent"


class Receiver:
    def __init__(self, settings: Settings, database_url: str, *, client: Client | None = None,
                 runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.database_url = database_url
        self.pool: asyncpg.Pool | None = None
        self.budget_pool: asyncpg.Pool | None = None
        self._stop_flusher = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._client = client
        self._runtime = runtime  # carries the metrics endpoint (METRICS_BIND_ADDRESS)
        self._client_lock = asyncio.Lock()

    async def start(self) -> None:
        self.pool = await db.create_pool(self.database_url, min_size=1, max_size=5)
        # Only for thin events: verifying them and fetching the full event (meter_errors).
        self.stripe = make_stripe_client(self.settings)
        # Its own connection, as in the worker: a slot is never waited for behind the pool.
        self.budget_pool = (await db.create_pool(self.database_url, min_size=1, max_size=1)
                            if self.settings.stripe_budget == "shared" else None)
        budget = StripeBudget(self.budget_pool) if self.budget_pool is not None else None
        self.gateway = StripeGateway(self.stripe, make_limiter(self.settings.stripe_rate_limit), budget)
        # Async meter errors this receiver applies count toward the Stripe circuit breaker,
        # like the workers' Stripe outcomes (circuit/flusher.py).
        self._flusher = asyncio.create_task(run_flusher(self.pool, self.settings, self._stop_flusher))

    async def stop(self) -> None:
        if self._flusher is not None:
            self._stop_flusher.set()
            await self._flusher
        if self.pool is not None:
            await self.pool.close()
        if self.budget_pool is not None:
            await self.budget_pool.close()

    async def temporal(self) -> Client:
        """Connected on first use and kept: the receiver must start (and store events) while
        Temporal is down."""
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.wait_for(
                    connect(runtime=self._runtime), self.settings.webhook_start_timeout_seconds)
            return self._client

    # ------------------------------------------------------------------ routes

    async def stripe_webhook(self, request: Request) -> JSONResponse:
        response, outcome = await self._intake(request)
        metrics.record_webhook_received(outcome)
        return response

    async def _intake(self, request: Request) -> tuple[JSONResponse, str]:
        try:
            body = await limits.read_body(request, self.settings.webhook_max_body_bytes,
                                          self.settings.webhook_read_timeout_seconds)
        except limits.BodyRefused as e:
            # Closing the connection is what stops uvicorn from reading the rest of the body.
            return _refuse(e.status, str(e), close=True), "invalid"
        header = request.headers.get("stripe-signature")
        if not header:
            return _refuse(400, "missing Stripe-Signature header"), "bad_signature"
        tolerance = self.settings.webhook_tolerance_seconds
        try:
            payload = body.decode("utf-8")
            stripe.WebhookSignature.verify_header(
                payload, header, self.settings.stripe_webhook_secret, tolerance=tolerance)
        except UnicodeDecodeError:
            return _refuse(400, "body is not UTF-8"), "invalid"
        except stripe.SignatureVerificationError as e:
            return _refuse(400, f"signature verification failed: {e.user_message or e}"), "bad_signature"
        # The SDK refuses only timestamps in the past; one far in the future would keep a
        # captured delivery replayable until then.
        ahead = (signature_timestamp(header) or 0) - int(time.time())
        if ahead > tolerance:
            return _refuse(400, f"signature timestamp is {ahead} s in the future "
                                f"(tolerance {tolerance} s)"), "bad_signature"
        try:
            event = parse_event(payload)
        except ValueError as e:
            return _refuse(400, f"malformed event: {e}"), "invalid"

        assert self.pool is not None
        try:
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(store_event_sql(), *store_event_args(event, "webhook"))
        except Exception as e:
            if is_permanent_store_error(e):
                # No retry can store it: say so rather than have Stripe retry for 3 days.
                return _refuse(400, f"event refused by the database: {_first_line(e)}"), "invalid"
            if not is_transient_store_error(e):
                raise
            log.error("event %s not stored, answering 503 so Stripe retries: %s", event["id"], e)
            return JSONResponse({"error": "event store unavailable"}, status_code=503), "error"

        outcome = "stored" if row["inserted"] else "duplicate"
        if row["status"] in DONE:
            return JSONResponse({"id": event["id"], "status": row["status"], "duplicate": True}), outcome
        # The event id is the correlation id of everything it causes: `grep evt_...` finds it all.
        token = correlation.set_current(event["id"])
        try:
            processing = await self._start_processing(event["id"])
        finally:
            correlation._current.reset(token)
        return JSONResponse({"id": event["id"], "status": "stored", "duplicate": not row["inserted"],
                             "processing": processing}), outcome

    async def thin_webhook(self, request: Request) -> JSONResponse:
        """A thin event from an event destination (webhooks/meter_errors.py)."""
        try:
            body = await limits.read_body(request, self.settings.webhook_max_body_bytes,
                                          self.settings.webhook_read_timeout_seconds)
        except limits.BodyRefused as e:
            return _refuse(e.status, str(e), close=True)
        secret = self.settings.stripe_event_destination_secret or self.settings.stripe_webhook_secret
        try:
            note = self.stripe.parse_event_notification(
                body, request.headers.get("stripe-signature"), secret, self.settings.webhook_tolerance_seconds)
        except stripe.SignatureVerificationError as e:
            return _refuse(400, f"signature verification failed: {e.user_message or e}")
        except (ValueError, KeyError, TypeError) as e:  # not JSON, a snapshot event, no id or type
            return _refuse(400, f"not a thin event notification: {_first_line(e) or type(e).__name__}")
        if note.type not in meter_errors.METER_ERROR_TYPES:
            return JSONResponse({"id": note.id, "ignored": True})  # nothing to do; no retries wanted
        related = getattr(note, "related_object", None)
        assert self.pool is not None
        try:
            await meter_errors.store_report(self.pool, note.id, note.type, related.id if related else None)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as e:
            log.error("error report %s not stored, answering 503 so Stripe retries: %s", note.id, e)
            return JSONResponse({"error": "event store unavailable"}, status_code=503)
        try:
            marked = await asyncio.wait_for(meter_errors.apply_report(self.pool, self.gateway, note.id),
                                            self.settings.webhook_start_timeout_seconds)
        except Exception as e:  # Stripe slow or down: stored is enough, the next tick sweeps it
            log.warning("error report %s stored; marking deferred to the tick: %s", note.id, _first_line(e))
            return JSONResponse({"id": note.id, "status": "stored", "marked": None})
        return JSONResponse({"id": note.id, "status": "processed", "marked": marked})

    async def _start_processing(self, event_id: str) -> str:
        try:
            client = await self.temporal()
            await asyncio.wait_for(
                client.start_workflow(
                    PROCESS_WORKFLOW, ProcessEventInput(event_id=event_id), id=workflow_id_for(event_id),
                    task_queue=self.settings.task_queue,
                    # Running: this delivery joins it. Closed: the inbox row was not processed
                    # (or we would not be here), so run it again.
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE),
                self.settings.webhook_start_timeout_seconds)
            return "started"
        except Exception as e:  # Temporal down or slow: stored is enough, replay sweeps it
            log.warning("event %s stored; processing deferred to replay (Temporal: %s)", event_id, e)
            return "deferred"

    async def ready(self, request: Request) -> JSONResponse:
        """Each dependency really checked, each within WEBHOOK_HEALTH_TIMEOUT_SECONDS: Postgres
        with a query on the inbox, Temporal with a gRPC call (GetSystemInfo, the call the
        client's own connect makes). Ready means intake works: Postgres is required; Temporal is
        reported, not required (an event stored while it is down is swept by the replay)."""
        timeout = self.settings.webhook_health_timeout_seconds
        postgres, temporal = await asyncio.gather(
            _check(self._check_postgres(), timeout, "unavailable"),
            _check(self._check_temporal(), timeout, "unreachable"))
        ok = postgres == "ok"
        return JSONResponse({"ready": ok, "postgres": postgres, "temporal": temporal},
                            status_code=200 if ok else 503)

    async def _check_postgres(self) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1 FROM billing.stripe_events LIMIT 1")

    async def _check_temporal(self) -> None:
        client = await self.temporal()
        await client.workflow_service.get_system_info(
            GetSystemInfoRequest(), retry=False,
            timeout=timedelta(seconds=self.settings.webhook_health_timeout_seconds))


async def _check(check: Awaitable[None], seconds: float, failed: str) -> str:
    """"ok", or `failed` and why (the first line of the error)."""
    try:
        await asyncio.wait_for(check, seconds)
    except TimeoutError:
        return f"{failed}: no answer within {seconds:g} s"
    except Exception as e:
        return f"{failed}: {_first_line(e) or type(e).__name__}"
    return "ok"


def _first_line(e: BaseException) -> str:
    return str(e).strip().split("\n", 1)[0][:300]


def _refuse(status: int, message: str, *, close: bool = False) -> JSONResponse:
    log.info("webhook refused (%d): %s", status, message)
    return JSONResponse({"error": message}, status_code=status,
                        headers={"Connection": "close"} if close else None)


def create_app(settings: Settings, database_url: str, *, client: Client | None = None,
               runtime: Runtime | None = None) -> Starlette:
    receiver = Receiver(settings, database_url, client=client, runtime=runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await receiver.start()
        try:
            yield
        finally:
            await receiver.stop()

    app = Starlette(
        routes=[
            Route(PATH, receiver.stripe_webhook, methods=["POST"]),
            Route(meter_errors.THIN_PATH, receiver.thin_webhook, methods=["POST"]),
            Route("/health/ready", receiver.ready, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app


def serve(settings: Settings, database_url: str, *, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from billing.telemetry import init_process

    telemetry = init_process(settings, "webhooks")
    try:
        app = create_app(settings, database_url, runtime=telemetry.runtime)
        uvicorn.Server(limits.uvicorn_config(app, settings, host=host, port=port, log_level="info",
                                             access_log=False, log_config=None)).run()
    finally:
        telemetry.shutdown()
