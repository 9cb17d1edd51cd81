"""The webhook inbox's activities (Stripe + Postgres): process one event, mark it failed,
dismiss it, and the replay's building blocks (sync the inbox with Stripe's event list, page
through what is pending, process a page). The per-object handlers are in webhooks/handlers.py.

One rule makes every handler idempotent and order-tolerant: the inbox row is locked
(`FOR UPDATE`), the Stripe object is locked (transaction advisory lock on its id) and
*re-read from Stripe*, and the local row is written from that fresh copy in the same
transaction that marks the event processed. A late, duplicated or replayed event therefore
writes the current state, never an older one, and "processed" always means "its effects are
committed". Transient failures (Stripe 5xx/429, connections) raise so Temporal retries; a
permanent failure rolls the handler back and marks the event `failed` with the error, so
replay can retry it and nothing is dropped silently."""

from __future__ import annotations

import logging
import math
from datetime import UTC
from typing import Any

import asyncpg
import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing import metrics
from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import StripeObjectError, event_object_id
from common.audit import AuditAction, AuditInput, write_audit
from common.heartbeat import Heartbeater, heartbeat_pages, resume
from webhooks.handlers import PermanentEventError, StripeObjectHandlers
from webhooks.types import (
    EVENT_NOT_DISMISSABLE,
    EVENT_NOT_IN_INBOX,
    DismissEventActivityInput,
    DismissEventResult,
    EventStatus,
    PendingCursor,
    PendingPageInput,
    PendingPageResult,
    ProcessEventInput,
    ProcessEventResult,
    ProcessPageCheckpoint,
    ProcessPageInput,
    ProcessPageResult,
    SyncInboxCheckpoint,
    SyncInboxInput,
    SyncInboxResult,
)

log = logging.getLogger("billing.stripe_events")

# An event in one of these statuses is never processed again (a dismissed one neither).
DONE = (EventStatus.PROCESSED.value, EventStatus.IGNORED.value, EventStatus.DISMISSED.value)
MAX_REPORTED_FAILURES = 50


class EventMarkFailedInput(ProcessEventInput):
    error: str


def store_event_sql() -> str:
    """Insert-if-absent into the inbox; a repeat delivery only bumps `deliveries`. Returns the
    row's status and whether this call inserted it. Shared by the receiver and the replay."""
    return """
        INSERT INTO billing.stripe_events (event_id, type, created, payload, object_id, source)
        VALUES ($1, $2, to_timestamp($3), $4::jsonb, $5, $6)
        ON CONFLICT (event_id) DO UPDATE SET deliveries = billing.stripe_events.deliveries + 1
        RETURNING status, (xmax = 0) AS inserted
    """


def store_event_args(event: dict[str, Any], source: str) -> tuple[Any, ...]:
    return (event["id"], event["type"], event["created"], event, event_object_id(event), source)


def type_patterns(types: list[str]) -> list[str]:
    """Stripe's `customer.*` wildcards as SQL LIKE patterns."""
    return [t.replace("%", r"\%").replace("_", r"\_").replace("*", "%") for t in types]


def _is_permanent_stripe_error(e: Exception) -> bool:
    if isinstance(e, stripe.RateLimitError):
        return False
    if isinstance(e, stripe.InvalidRequestError | stripe.CardError | stripe.IdempotencyError):
        return True
    return isinstance(e, ApplicationError) and e.non_retryable


class StripeEventActivities(StripeObjectHandlers):
    """The inbox's activities; the handlers (and the writes resync/ and credits/ share:
    `grant_credits`, `ensure_customer`) come from `StripeObjectHandlers`."""

    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway) -> None:
        super().__init__(stripe_gateway)
        self.pool = pool

    # ------------------------------------------------------------------ one event

    @activity.defn(name="stripe_events.process")
    async def process(self, inp: ProcessEventInput) -> ProcessEventResult:
        return await self.process_one(inp.event_id)

    @activity.defn(name="stripe_events.mark_failed")
    async def mark_failed(self, inp: EventMarkFailedInput) -> None:
        async with self.pool.acquire() as conn:
            await _mark_failed(conn, inp.event_id, inp.error)

    async def process_one(self, event_id: str) -> ProcessEventResult:
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(
                        "SELECT type, status, payload FROM billing.stripe_events WHERE event_id = $1 FOR UPDATE",
                        event_id)
                    if row is None:
                        raise ApplicationError(
                            f"event {event_id} is not in the inbox", type=EVENT_NOT_IN_INBOX, non_retryable=True)
                    if row["status"] in DONE:
                        return ProcessEventResult(event_id=event_id, type=row["type"],
                                                  status=EventStatus(row["status"]), already_done=True)
                    handler = self.handler(row["type"])
                    if handler is None:
                        await _set_status(conn, event_id, EventStatus.IGNORED, None)
                        return ProcessEventResult(event_id=event_id, type=row["type"], status=EventStatus.IGNORED,
                                                  detail="type not handled")
                    detail = await handler(conn, row["payload"])
                    await _set_status(conn, event_id, EventStatus.PROCESSED, None)
                    return ProcessEventResult(event_id=event_id, type=row["type"],
                                              status=EventStatus.PROCESSED, detail=detail)
            except (PermanentEventError, StripeObjectError, stripe.StripeError, ApplicationError) as e:
                if isinstance(e, ApplicationError) and e.type == EVENT_NOT_IN_INBOX:
                    raise
                if isinstance(e, stripe.StripeError | ApplicationError) and not _is_permanent_stripe_error(e):
                    raise  # transient: Temporal retries the activity
                error = _describe(e)
                log.warning("event %s failed permanently: %s", event_id, error)
                typ = await _mark_failed(conn, event_id, error) or await conn.fetchval(
                    "SELECT type FROM billing.stripe_events WHERE event_id = $1", event_id)
                return ProcessEventResult(event_id=event_id, type=typ or "", status=EventStatus.FAILED, detail=error)

    # ------------------------------------------------------------------ dismissal

    @activity.defn(name="stripe_events.dismiss")
    async def dismiss(self, inp: DismissEventActivityInput) -> DismissEventResult:
        """Mark a failed event `dismissed` and audit it (`event.dismiss`), in one transaction
        under the inbox row's lock (a concurrent processing of it waits, then finds it done).
        Once per event: dismissing it again writes nothing and says so. An event that did not
        fail (processed, ignored, or still received) is refused; an unknown one too."""
        req = inp.request
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT type, status, error, payload, dismissed_at, dismissed_by, dismiss_reason
                   FROM billing.stripe_events WHERE event_id = $1 FOR UPDATE""", req.event_id)
            if row is None:
                raise ApplicationError(f"event {req.event_id} is not in the inbox", type=EVENT_NOT_IN_INBOX,
                                       non_retryable=True)
            if row["status"] == EventStatus.DISMISSED:
                return DismissEventResult(
                    event_id=req.event_id, type=row["type"], error=row["error"], dismissed_at=row["dismissed_at"],
                    dismissed_by=row["dismissed_by"], reason=row["dismiss_reason"], already_dismissed=True)
            if row["status"] != EventStatus.FAILED:
                raise ApplicationError(
                    f"event {req.event_id} ({row['type']}) is {row['status']}: only a failed event can be "
                    "dismissed. Nothing was written.", type=EVENT_NOT_DISMISSABLE, non_retryable=True)
            at = await conn.fetchval(
                """UPDATE billing.stripe_events SET status = $2, dismissed_at = now(), dismissed_by = $3,
                          dismiss_reason = $4 WHERE event_id = $1 RETURNING dismissed_at""",
                req.event_id, EventStatus.DISMISSED.value, req.actor, req.reason)
            await write_audit(conn, AuditInput(
                actor=req.actor, action=AuditAction.EVENT_DISMISS, entity_type="stripe_event", entity_id=req.event_id,
                before={"status": row["status"], "error": row["error"]}, after={"status": EventStatus.DISMISSED.value},
                reason=req.reason, workflow_id=inp.workflow_id, run_id=inp.workflow_run_id,
                idempotency_key=f"event-dismiss:{req.event_id}",
                customer_id=await _event_customer(conn, row["payload"])))
        return DismissEventResult(event_id=req.event_id, type=row["type"], error=row["error"], dismissed_at=at,
                                  dismissed_by=req.actor, reason=req.reason)

    # ------------------------------------------------------------------ replay

    @activity.defn(name="stripe_events.sync_inbox")
    async def sync_inbox(self, inp: SyncInboxInput) -> SyncInboxResult:
        """Page Stripe's event list over the window; every event missing from the inbox is
        stored (apply) or listed (dry-run). Heartbeats its cursor and resumes from it."""
        cp = resume(SyncInboxCheckpoint, SyncInboxCheckpoint())
        w = inp.window
        # Stripe's `created` is whole seconds: an event of the window's last second is included.
        gte, lt = math.floor(w.since.timestamp()), math.ceil(w.until.timestamp())

        async def one_page() -> bool:
            events, has_more = await self.stripe.list_events_page(
                created_gte=gte, created_lt=lt, types=w.types, starting_after=cp.starting_after,
                limit=inp.page_size)
            if events:
                await self._store_missing(events, inp, cp)
                cp.starting_after = events[-1]["id"]
            return has_more and bool(events)

        await heartbeat_pages(cp, one_page)
        async with self.pool.acquire() as conn:
            # Everything left to process in the window, whether Stripe still lists it or not:
            # the never-received rows just stored plus rows stuck in received/failed.
            cp.counts.pending = await conn.fetchval(
                f"""SELECT count(*) FROM billing.stripe_events
                    WHERE created >= $1 AND created < $2 AND status IN ('received', 'failed')
                    {_type_clause(w.types, 3)}""",
                inp.sweep_since or w.since, w.until, *([type_patterns(w.types)] if w.types else []))
            if inp.dry_run:
                cp.counts.pending += cp.counts.never_received  # nothing was stored
        return SyncInboxResult(counts=cp.counts, sample=cp.sample)

    async def _store_missing(self, events: list[dict[str, Any]], inp: SyncInboxInput,
                             cp: SyncInboxCheckpoint) -> None:
        """Count one page of Stripe's events against the inbox; store the missing ones (apply)
        or sample them (dry-run)."""
        async with self.pool.acquire() as conn, conn.transaction():
            known = {r["event_id"]: r["status"] for r in await conn.fetch(
                "SELECT event_id, status FROM billing.stripe_events WHERE event_id = ANY($1)",
                [e["id"] for e in events])}
            for e in events:
                status = known.get(e["id"])
                cp.counts.seen += 1
                if status is None:
                    cp.counts.never_received += 1
                    if inp.dry_run:
                        _sample(cp, inp, e["id"])
                    else:
                        await conn.execute(store_event_sql(), *store_event_args(e, "replay"))
                elif status == EventStatus.DISMISSED:
                    cp.counts.dismissed += 1
                elif status in DONE:
                    cp.counts.already_processed += 1
                elif inp.dry_run:
                    _sample(cp, inp, e["id"])

    @activity.defn(name="stripe_events.pending_page")
    async def pending_page(self, inp: PendingPageInput) -> PendingPageResult:
        w = inp.window
        args: list[Any] = [w.since, w.until, inp.received_before, inp.limit]
        cursor_clause = ""
        if inp.after is not None:
            args += [inp.after.created, inp.after.event_id]
            cursor_clause = "AND (created, event_id) > ($5, $6)"
        if w.types:
            args.append(type_patterns(w.types))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"""
                SELECT event_id, created FROM billing.stripe_events
                WHERE created >= $1 AND created < $2 AND received_at < $3
                  AND status IN ('received', 'failed') {cursor_clause}
                  {_type_clause(w.types, len(args))}
                ORDER BY created, event_id LIMIT $4
                """, *args)
        if not rows:
            return PendingPageResult(event_ids=[])
        last = rows[-1]
        return PendingPageResult(
            event_ids=[r["event_id"] for r in rows],
            next_cursor=PendingCursor(created=last["created"].astimezone(UTC), event_id=last["event_id"]))

    @activity.defn(name="stripe_events.process_page")
    async def process_page(self, inp: ProcessPageInput) -> ProcessPageResult:
        """The same handler as a live delivery, one event at a time in the given (creation)
        order; heartbeats how far it got."""
        cp = resume(ProcessPageCheckpoint, ProcessPageCheckpoint())
        result = cp.result
        async with Heartbeater(cp) as hb:
            for i in range(cp.next, len(inp.event_ids)):
                r = await self.process_one(inp.event_ids[i])
                if r.status == EventStatus.DISMISSED:  # dismissed since it was listed
                    result.counts.dismissed += 1
                elif r.already_done:
                    result.counts.already_processed += 1
                elif r.status == EventStatus.PROCESSED:
                    result.counts.replayed += 1
                elif r.status == EventStatus.IGNORED:
                    result.counts.ignored += 1
                else:
                    result.counts.failed += 1
                    if len(result.failures) < MAX_REPORTED_FAILURES:
                        result.failures.append(f"{r.event_id} ({r.type}): {r.detail}")
                cp.next = i + 1
                hb.record(cp)
        return result


def _sample(cp: SyncInboxCheckpoint, inp: SyncInboxInput, event_id: str) -> None:
    if len(cp.sample) < inp.sample_limit:
        cp.sample.append(event_id)


def _type_clause(types: list[str], param_index: int) -> str:
    return f"AND type LIKE ANY(${param_index})" if types else ""


async def _event_customer(conn: asyncpg.Connection, event: dict[str, Any]) -> str | None:
    """Our customer id of the customer an event is about, if we know it."""
    obj = (event.get("data") or {}).get("object") or {}
    ref = obj.get("id") if obj.get("object") == "customer" else obj.get("customer")
    stripe_id = ref.get("id") if isinstance(ref, dict) else ref
    if not stripe_id:
        return None
    return await conn.fetchval("SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1", stripe_id)


async def _set_status(conn: asyncpg.Connection, event_id: str, status: EventStatus, error: str | None) -> None:
    typ = await conn.fetchval(
        """UPDATE billing.stripe_events SET status = $2, error = $3, attempts = attempts + 1,
                  processed_at = now() WHERE event_id = $1 RETURNING type""", event_id, status.value, error)
    if typ is not None:
        metrics.record_webhook_processed(metrics.event_type_family(typ), status.value)


async def _mark_failed(conn: asyncpg.Connection, event_id: str, error: str) -> str | None:
    """Returns the event's type, None if it was not marked (unknown, or processed meanwhile)."""
    # Never downgrades an event that was processed (e.g. by a concurrent delivery) or dismissed
    # meanwhile.
    typ = await conn.fetchval(
        """UPDATE billing.stripe_events SET status = 'failed', error = $2, attempts = attempts + 1,
                  last_error_at = now()
           WHERE event_id = $1 AND status <> ALL($3::text[]) RETURNING type""", event_id, error[:2000], list(DONE))
    if typ is not None:
        metrics.record_webhook_processed(metrics.event_type_family(typ), EventStatus.FAILED.value)
    return typ


def _describe(e: Exception) -> str:
    if isinstance(e, stripe.StripeError):
        return f"Stripe {e.http_status}: {e.user_message or e}"
    if isinstance(e, ApplicationError):
        return e.message
    return str(e)
