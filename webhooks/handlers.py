"""The Stripe event handlers, one per object (customers, subscriptions, checkouts and their
credit grants, invoices), and the writes they share with resync/ and credits/.

One rule makes every handler idempotent and order-tolerant: the Stripe object is locked
(transaction advisory lock on its id) and *re-read from Stripe*, and the local row is written
from that fresh copy in the transaction that marks the event processed (webhooks/activities.py
holds the inbox row's lock around it). A late, duplicated or replayed event therefore writes the
current state, never an older one. A handler raises `PermanentEventError` when the event cannot
be processed as things stand."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import (
    CreditGrant,
    CustomerRow,
    InvoiceRow,
    credit_grant,
    customer_row,
    event_object_id,
    invoice_row,
    subscription_item_rows,
    subscription_row,
    ts,
)
from common.audit import AuditAction, AuditInput, ledger_audit_key, write_audit

WEBHOOK_ACTOR = "stripe-webhook"


# Every invoice event of the lifecycle (FACTS.md "Invoices and revenue"); each one re-reads the
# invoice. The payment outcomes also refresh the subscription the invoice bills.
INVOICE_PAYMENT_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"})
INVOICE_EVENTS = frozenset({
    "invoice.created", "invoice.updated", "invoice.deleted", "invoice.finalized", "invoice.voided",
    "invoice.marked_uncollectible", *INVOICE_PAYMENT_EVENTS,
})

Handler = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[str]]


class PermanentEventError(Exception):
    """The event cannot be processed as things stand; retrying the activity cannot help."""


async def lock_object(conn: asyncpg.Connection, object_id: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"stripe:{object_id}")


class StripeObjectHandlers:
    """The handler of every event type processed, by Stripe object, over the Stripe gateway."""

    def __init__(self, stripe_gateway: StripeGateway) -> None:
        self.stripe = stripe_gateway
        self._handlers: dict[str, Handler] = {
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

    def handler(self, event_type: str) -> Handler | None:
        """The handler of `event_type`, None when the type is not handled (the event is ignored)."""
        return self._handlers.get(event_type)

    # ------------------------------------------------------------------ by object

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
    if raw is not None:
        await write_subscription_items(conn, row.stripe_subscription_id, row.stripe_customer_id, raw)


async def write_subscription_items(conn: asyncpg.Connection, sub_id: str, stripe_customer_id: str,
                                   raw: dict[str, Any]) -> None:
    """The subscription's anchor and its items' prices, meters and periods (migration 0018), as
    the copy just read from Stripe has them: the billing periods of the reconciliation."""
    await conn.execute("UPDATE billing.subscriptions SET billing_cycle_anchor = $2 WHERE stripe_subscription_id = $1",
                       sub_id, ts(raw.get("billing_cycle_anchor")))
    items = subscription_item_rows(raw)
    await conn.execute(
        "DELETE FROM billing.subscription_items WHERE stripe_subscription_id = $1 AND NOT "
        "(stripe_subscription_item_id = ANY($2::text[]))", sub_id, [i["id"] for i in items])
    await conn.executemany(
        """
        INSERT INTO billing.subscription_items AS i
            (stripe_subscription_item_id, stripe_subscription_id, stripe_customer_id, price_id, meter_id,
             usage_type, price, interval, interval_count, current_period_start, current_period_end)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11)
        ON CONFLICT (stripe_subscription_item_id) DO UPDATE SET
            price_id = EXCLUDED.price_id, meter_id = EXCLUDED.meter_id, usage_type = EXCLUDED.usage_type,
            price = EXCLUDED.price, interval = EXCLUDED.interval, interval_count = EXCLUDED.interval_count,
            current_period_start = EXCLUDED.current_period_start,
            current_period_end = EXCLUDED.current_period_end, updated_at = now()
        """,
        [(i["id"], sub_id, stripe_customer_id, i["price_id"], i["meter_id"], i["usage_type"], i["price"],
          i["interval"], i["interval_count"], i["current_period_start"], i["current_period_end"])
         for i in items])


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


def _object_id(event: dict[str, Any]) -> str:
    oid = event_object_id(event)
    if not oid:
        raise PermanentEventError(f"event {event.get('id')} carries no data.object.id")
    return oid
