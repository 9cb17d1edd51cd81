"""Stripe event handlers and the replay's building blocks (Stripe + Postgres).

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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing import metrics
from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import (
    CreditGrant,
    CustomerRow,
    InvoiceRow,
    StripeObjectError,
    credit_grant,
    customer_row,
    event_object_id,
    invoice_row,
    subscription_row,
    ts,
)
from common.audit import AuditAction, AuditInput, ledger_audit_key, write_audit
from common.heartbeat import Heartbeater, heartbeat_pages, resume
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
WEBHOOK_ACTOR = "stripe-webhook"


# Every invoice event of the lifecycle (FACTS.md "Invoices and revenue"); each one re-reads the
# invoice. The payment outcomes also refresh the subscription the invoice bills.
INVOICE_PAYMENT_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"})
INVOICE_EVENTS = frozenset({
    "invoice.created", "invoice.updated", "invoice.deleted", "invoice.finalized", "invoice.voided",
    "invoice.marked_uncollectible", *INVOICE_PAYMENT_EVENTS,
})


class PermanentEventError(Exception):
    """The event cannot be processed as things stand; retrying the activity cannot help."""


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


async def lock_object(conn: asyncpg.Connection, object_id: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"stripe:{object_id}")


def _is_permanent_stripe_error(e: Exception) -> bool:
    if isinstance(e, stripe.RateLimitError):
        return False
    if isinstance(e, stripe.InvalidRequestError | stripe.CardError | stripe.IdempotencyError):
        return True
    return isinstance(e, ApplicationError) and e.non_retryable


class StripeEventActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway) -> None:
        self.pool = pool
        self.stripe = stripe_gateway
        self._handlers: dict[str, Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[str]]] = {
            "customer.created": self._on_customer,
            "customer.updated": self._on_customer,
            "customer.deleted": self._on_customer,
            "customer.subscription.created": self._on_subscription,
            "customer.subscription.updated": self._on_subscription,
            "customer.subscription.deleted": self._on_subscription,
            "checkout.session.completed": self._on_checkout,
            "checkout.session.async_payment_succeeded": self._on_checkout,
            **{t: self._on_invoice for t in INVOICE_EVENTS},
        }

    @property
    def handled_types(self) -> list[str]:
        return sorted(self._handlers)

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
                    handler = self._handlers.get(row["type"])
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

    # ------------------------------------------------------------------ handlers

    async def _on_customer(self, conn: asyncpg.Connection, event: dict[str, Any]) -> str:
        cus_id = _object_id(event)
        await lock_object(conn, cus_id)
        fresh = await self.stripe.retrieve("customer", cus_id)
        if fresh is None or fresh.get("deleted"):
            n = await conn.execute(
                """UPDATE billing.customers SET deleted_at = coalesce(deleted_at, now()),
                          stripe_synced_at = now(), updated_at = now()
                   WHERE stripe_customer_id = $1""", cus_id)
            return f"customer {cus_id} deleted ({n.split()[-1]} local row)"
        customer_id = await self._upsert_customer(conn, customer_row(fresh))
        return f"customer {cus_id} -> {customer_id}"

    async def _on_subscription(self, conn: asyncpg.Connection, event: dict[str, Any]) -> str:
        return await self._sync_subscription(conn, _object_id(event))

    async def _on_invoice(self, conn: asyncpg.Connection, event: dict[str, Any]) -> str:
        """Every invoice event: the mirror row from a fresh read of Stripe (status, amounts,
        status_transitions), whatever the event says; a draft Stripe no longer has was deleted."""
        inv_id = _object_id(event)
        await lock_object(conn, inv_id)
        read_at = await read_time(conn)
        fresh = await self.stripe.retrieve("invoice", inv_id)
        raw: dict[str, Any] | None = fresh
        if fresh is not None:
            inv = invoice_row(fresh)
        else:
            inv, raw = deleted_draft(event), (event.get("data") or {}).get("object")
        written = await upsert_invoice(conn, inv, raw, read_at=read_at, event_at=ts(event.get("created")))
        detail = f"invoice {inv_id}: {inv.status}" + ("" if written else " (a later read is stored; kept)")
        if inv.stripe_subscription_id and event.get("type") in INVOICE_PAYMENT_EVENTS:
            # The payment outcome moves the subscription's status.
            detail += "; " + await self._sync_subscription(conn, inv.stripe_subscription_id)
        return detail

    async def _on_checkout(self, conn: asyncpg.Connection, event: dict[str, Any]) -> str:
        cs_id = _object_id(event)
        await lock_object(conn, cs_id)
        fresh = await self.stripe.retrieve("checkout.session", cs_id)
        if fresh is None:
            raise PermanentEventError(f"checkout session {cs_id} does not exist in Stripe")
        if fresh.get("mode") == "subscription" and fresh.get("subscription"):
            sub = fresh["subscription"]
            return await self._sync_subscription(conn, sub if isinstance(sub, str) else sub["id"])
        grant = credit_grant(fresh)
        if grant is None:
            return f"checkout {cs_id}: nothing to grant"
        return await self.grant_credits(conn, grant, event_id=event["id"], actor=WEBHOOK_ACTOR)

    # ------------------------------------------------------------------ shared writes

    async def grant_credits(
        self, conn: asyncpg.Connection, grant: CreditGrant, *, event_id: str | None, actor: str,
        workflow_id: str | None = None, run_id: str | None = None,
    ) -> str:
        """One grant per checkout session, ever: the ledger's unique `source` decides, and the
        balance moves only when this call inserted the ledger row."""
        customer_id = await self.ensure_customer(conn, grant.stripe_customer_id)
        if customer_id is None:
            raise PermanentEventError(
                f"checkout {grant.checkout_session_id}: Stripe customer {grant.stripe_customer_id} does not exist")
        ledger_id = await conn.fetchval(
            """
            INSERT INTO billing.credit_ledger
                (customer_id, amount, source, reason, stripe_event_id, checkout_session_id, actor)
            VALUES ($1, $2, $3, 'credit purchase', $4, $5, $6)
            ON CONFLICT (source) DO NOTHING RETURNING id
            """,
            customer_id, grant.amount, grant.source, event_id, grant.checkout_session_id, actor)
        if ledger_id is None:
            return f"checkout {grant.checkout_session_id}: credits already granted"
        balance = await conn.fetchval(
            """
            INSERT INTO billing.credit_balances (customer_id, balance) VALUES ($1, $2)
            ON CONFLICT (customer_id) DO UPDATE
                SET balance = billing.credit_balances.balance + EXCLUDED.balance, updated_at = now()
            RETURNING balance
            """, customer_id, grant.amount)
        await write_audit(conn, AuditInput(
            actor=actor, action=AuditAction.CREDITS_GRANT, entity_type="credit_balance", entity_id=customer_id,
            before={"balance": balance - grant.amount},
            after={"balance": balance, "granted": grant.amount, "ledger_id": ledger_id, "ledger_source": grant.source},
            reason=f"checkout {grant.checkout_session_id}" + (f" (event {event_id})" if event_id else ""),
            workflow_id=workflow_id, run_id=run_id, idempotency_key=ledger_audit_key(ledger_id),
            customer_id=customer_id))
        return f"checkout {grant.checkout_session_id}: granted {grant.amount} to {customer_id}"

    async def _sync_subscription(self, conn: asyncpg.Connection, sub_id: str) -> str:
        await lock_object(conn, sub_id)
        fresh = await self.stripe.retrieve("subscription", sub_id)
        if fresh is None:
            raise PermanentEventError(f"subscription {sub_id} does not exist in Stripe")
        row = subscription_row(fresh)
        customer_id = await self.ensure_customer(conn, row.stripe_customer_id)
        await upsert_subscription(conn, row, customer_id, fresh)
        return f"subscription {sub_id}: {row.status}"

    async def ensure_customer(self, conn: asyncpg.Connection, stripe_customer_id: str) -> str | None:
        """Our customer id for a Stripe customer, creating the local row from Stripe if an event
        about its subscription or checkout arrives before `customer.created`. Read under the
        customer's lock, which `billing.link_customer` takes too: the id returned stays the
        customer's until this transaction ends (a re-key waits for it)."""
        await lock_object(conn, stripe_customer_id)
        known = await conn.fetchval(
            "SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1", stripe_customer_id)
        if known is not None:
            return known
        fresh = await self.stripe.retrieve("customer", stripe_customer_id)
        if fresh is None or fresh.get("deleted"):
            return None
        return await self._upsert_customer(conn, customer_row(fresh))

    async def _upsert_customer(self, conn: asyncpg.Connection, c: CustomerRow) -> str:
        by_stripe = await conn.fetchval(
            "SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1", c.stripe_customer_id)
        if by_stripe is None:
            linked = await conn.fetchrow(
                "SELECT stripe_customer_id FROM billing.customers WHERE customer_id = $1", c.customer_id)
            if linked is not None and linked["stripe_customer_id"] not in (None, c.stripe_customer_id):
                raise PermanentEventError(
                    f"customer_id {c.customer_id} is linked to {linked['stripe_customer_id']}, "
                    f"but Stripe customer {c.stripe_customer_id} claims it in its metadata")
            await conn.execute(
                """
                INSERT INTO billing.customers (customer_id, stripe_customer_id, email, name, stripe_synced_at)
                VALUES ($1, $2, $3, $4, now())
                ON CONFLICT (customer_id) DO UPDATE SET stripe_customer_id = EXCLUDED.stripe_customer_id,
                    email = EXCLUDED.email, name = EXCLUDED.name, stripe_synced_at = now(), updated_at = now()
                """, c.customer_id, c.stripe_customer_id, c.email, c.name)
            return c.customer_id
        await conn.execute(
            """UPDATE billing.customers SET email = $2, name = $3, deleted_at = NULL,
                      stripe_synced_at = now(), updated_at = now()
               WHERE stripe_customer_id = $1""", c.stripe_customer_id, c.email, c.name)
        return by_stripe

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


async def upsert_subscription(
    conn: asyncpg.Connection, row: Any, customer_id: str | None, raw: dict[str, Any] | None,
) -> None:
    """Write the local copy of a subscription from a fresh Stripe read (the caller holds the
    object's lock)."""
    await conn.execute(
        """
        INSERT INTO billing.subscriptions AS s
            (stripe_subscription_id, stripe_customer_id, customer_id, status, current_period_start,
             current_period_end, cancel_at_period_end, cancel_at, canceled_at, ended_at, items, raw,
             stripe_created, synced_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, $13, now(), now())
        ON CONFLICT (stripe_subscription_id) DO UPDATE SET
            stripe_customer_id = EXCLUDED.stripe_customer_id,
            customer_id = coalesce(EXCLUDED.customer_id, s.customer_id),
            status = EXCLUDED.status, current_period_start = EXCLUDED.current_period_start,
            current_period_end = EXCLUDED.current_period_end,
            cancel_at_period_end = EXCLUDED.cancel_at_period_end, cancel_at = EXCLUDED.cancel_at,
            canceled_at = EXCLUDED.canceled_at, ended_at = EXCLUDED.ended_at, items = EXCLUDED.items,
            raw = coalesce(EXCLUDED.raw, s.raw), synced_at = now(), updated_at = now()
        """,
        row.stripe_subscription_id, row.stripe_customer_id, customer_id, row.status,
        row.current_period_start, row.current_period_end, row.cancel_at_period_end, row.cancel_at,
        row.canceled_at, row.ended_at, row.items, raw, row.stripe_created,
    )


async def read_time(conn: asyncpg.Connection) -> datetime:
    """Postgres' clock now (not the transaction's start): taken just before a Stripe read, it is
    the time of the copy that read returns."""
    return await conn.fetchval("SELECT clock_timestamp()")


def deleted_draft(event: dict[str, Any]) -> InvoiceRow:
    """The row of an invoice an event names and Stripe no longer has: a deleted draft (only
    drafts can be deleted), from the event's copy. Anything else is a permanent failure."""
    obj = (event.get("data") or {}).get("object") or {}
    if obj.get("status") != "draft":
        raise PermanentEventError(f"invoice {obj.get('id')} does not exist in Stripe")
    return invoice_row(obj).deleted(ts(event.get("created")))


async def upsert_invoice(
    conn: asyncpg.Connection, row: InvoiceRow, raw: dict[str, Any] | None, *, read_at: datetime,
    event_at: datetime | None = None,
) -> bool:
    """Write the mirror row of an invoice from a copy read from Stripe at `read_at` (the caller
    holds the object's lock). A copy read earlier than the stored one is not written (False):
    out-of-order events, replays and resyncs never take the mirror back in time."""
    written = await conn.fetchval(
        """
        INSERT INTO billing.invoices AS i
            (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status, currency,
             amount_due, amount_paid, attempt_count, period_start, period_end, raw, stripe_created,
             number, total, amount_remaining, finalized_at, paid_at, voided_at, marked_uncollectible_at,
             deleted_at, last_event_at, synced_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14, $15, $16, $17, $18, $19,
                $20, $21, $22, now())
        ON CONFLICT (stripe_invoice_id) DO UPDATE SET
            stripe_customer_id = EXCLUDED.stripe_customer_id,
            stripe_subscription_id = EXCLUDED.stripe_subscription_id,
            status = EXCLUDED.status, currency = EXCLUDED.currency,
            amount_due = EXCLUDED.amount_due, amount_paid = EXCLUDED.amount_paid,
            attempt_count = EXCLUDED.attempt_count, period_start = EXCLUDED.period_start,
            period_end = EXCLUDED.period_end, raw = coalesce(EXCLUDED.raw, i.raw),
            stripe_created = EXCLUDED.stripe_created, number = EXCLUDED.number, total = EXCLUDED.total,
            amount_remaining = EXCLUDED.amount_remaining, finalized_at = EXCLUDED.finalized_at,
            paid_at = EXCLUDED.paid_at, voided_at = EXCLUDED.voided_at,
            marked_uncollectible_at = EXCLUDED.marked_uncollectible_at,
            deleted_at = coalesce(i.deleted_at, EXCLUDED.deleted_at),
            last_event_at = GREATEST(i.last_event_at, EXCLUDED.last_event_at),
            synced_at = EXCLUDED.synced_at, updated_at = now()
        WHERE i.synced_at IS NULL OR i.synced_at <= EXCLUDED.synced_at
        RETURNING true
        """,
        row.stripe_invoice_id, row.stripe_customer_id, row.stripe_subscription_id, row.status, row.currency,
        row.amount_due, row.amount_paid, row.attempt_count, row.period_start, row.period_end, raw,
        row.stripe_created, row.number, row.total, row.amount_remaining, row.finalized_at, row.paid_at,
        row.voided_at, row.marked_uncollectible_at, row.deleted_at, event_at, read_at,
    )
    return bool(written)


def _sample(cp: SyncInboxCheckpoint, inp: SyncInboxInput, event_id: str) -> None:
    if len(cp.sample) < inp.sample_limit:
        cp.sample.append(event_id)


def _type_clause(types: list[str], param_index: int) -> str:
    return f"AND type LIKE ANY(${param_index})" if types else ""


def _object_id(event: dict[str, Any]) -> str:
    oid = event_object_id(event)
    if not oid:
        raise PermanentEventError(f"event {event.get('id')} carries no data.object.id")
    return oid


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
