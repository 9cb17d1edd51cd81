"""A webhook test stack: the real receiver (uvicorn, in-process, on a free port) registered as a
webhook endpoint on the emulator, a worker on the test's task queue, and helpers that drive
Stripe through the official SDK and compare Postgres with Stripe."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import stripe
import uvicorn
from temporalio.client import Client

from billing.settings import Settings
from billing.stripe_objects import (
    InvoiceRow,
    credit_grant,
    customer_row,
    invoice_row,
    subscription_row,
)
from devstack.processes import free_port
from resync.mirror import local_compared
from stripe_emulator.admin import EmulatorAdmin
from stripe_emulator.webhooks import sign
from tests.integration.recon_helpers import make_settings, running_worker
from webhooks.app import PATH, create_app
from webhooks.limits import uvicorn_config

ALL_EVENTS = ["*"]


@dataclass
class WebhookStack:
    url: str  # the receiver's base URL
    settings: Settings
    secret: str

    @property
    def endpoint(self) -> str:
        return self.url + PATH

    def signed_headers(self, body: str, *, secret: str | None = None, at: int | None = None) -> dict[str, str]:
        return {"Content-Type": "application/json",
                "Stripe-Signature": sign(body, secret or self.secret, at or int(time.time()))}

    async def deliver(self, event: dict[str, Any]) -> httpx.Response:
        """Deliver one event exactly as Stripe would (signed, real time)."""
        body = json.dumps(event)
        async with httpx.AsyncClient() as http:
            return await http.post(self.endpoint, content=body, headers=self.signed_headers(body))


def webhook_settings(postgres_dsn: str, emulator: str, secret: str, task_queue: str) -> Settings:
    return make_settings(postgres_dsn, emulator, STRIPE_WEBHOOK_SECRET=secret, BILLING_TASK_QUEUE=task_queue)


@asynccontextmanager
async def receiver(settings: Settings, client: Client | None) -> AsyncIterator[str]:
    port = free_port()
    assert settings.database_url
    app = create_app(settings, settings.database_url, client=client)
    # The production server configuration (limits included), on a free port.
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def webhook_stack(
    client: Client, postgres_dsn: str, emulator: str, admin: EmulatorAdmin, stripe_client: stripe.StripeClient,
    secret: str, task_queue: str, *, register: bool = True, with_worker: bool = True,
) -> AsyncIterator[WebhookStack]:
    settings = webhook_settings(postgres_dsn, emulator, secret, task_queue)
    # Real-time signatures (the receiver checks them against its clock) and quick retries.
    await admin.configure(webhook_secret=secret, webhook_signature_clock="real",
                          webhook_retry_schedule_seconds=[0.5, 1.0])
    async with receiver(settings, client) as url:
        stack = WebhookStack(url=url, settings=settings, secret=secret)
        if register:
            await stripe_client.v1.webhook_endpoints.create_async(
                params={"url": stack.endpoint, "enabled_events": ALL_EVENTS})
        if with_worker:
            async with running_worker(client, settings, task_queue):
                yield stack
        else:
            yield stack


# ---------------------------------------------------------------------------- Stripe activity


@dataclass
class Activity:
    """What a scenario did in Stripe, to know what Postgres must end up holding."""

    customers: list[str] = field(default_factory=list)  # Stripe customer ids
    subscriptions: list[str] = field(default_factory=list)
    credit_sessions: dict[str, int] = field(default_factory=dict)  # cs id -> credits


async def billing_scenario(sc: stripe.StripeClient, admin: EmulatorAdmin, *, n_customers: int = 4) -> Activity:
    """Customers, subscriptions that change and cancel, credit purchases, paid and failed
    invoices: every event type the handlers care about, several times."""
    tag = uuid.uuid4().hex[:6]
    act = Activity()
    product = await sc.v1.products.create_async(params={"name": f"Plan {tag}"})
    basic = await sc.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 1000, "recurring": {"interval": "month"}})
    pro = await sc.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 5000, "recurring": {"interval": "month"}})
    credits_price = await sc.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 2500})
    for i in range(n_customers):
        cus = await sc.v1.customers.create_async(params={
            "name": f"Customer {tag}-{i}", "email": f"c{i}-{tag}@example.com",
            "metadata": {"customer_id": f"app-{tag}-{i}"}})
        act.customers.append(cus.id)
        sub = await sc.v1.subscriptions.create_async(params={
            "customer": cus.id, "items": [{"price": basic.id, "quantity": 1}]})
        act.subscriptions.append(sub.id)
        # Upgrade and change the quantity: several subscription.updated events.
        item = sub["items"]["data"][0]
        await sc.v1.subscriptions.update_async(sub.id, params={"items": [{"id": item.id, "price": pro.id}]})
        await sc.v1.subscriptions.update_async(sub.id, params={"items": [{"id": item.id, "quantity": 2 + i}]})
        if i % 2 == 1:
            await sc.v1.subscriptions.update_async(sub.id, params={"cancel_at_period_end": True})
        if i % 3 == 2:
            await sc.v1.subscriptions.cancel_async(sub.id)
        else:
            # A declined payment (past_due), then paid (active again).
            inv = await sc.v1.invoices.create_async(params={"customer": cus.id, "subscription": sub.id})
            await admin.fail_invoice_payment(inv.id)
            if i % 2 == 0:
                await sc.v1.invoices.pay_async(inv.id)
        # A credit purchase through Checkout.
        amount = 500 * (i + 1)
        cs = await sc.v1.checkout.sessions.create_async(params={
            "mode": "payment", "customer": cus.id, "success_url": "https://example.com/ok",
            "line_items": [{"price": credits_price.id, "quantity": 1}],
            "metadata": {"credits": str(amount)}})
        await admin.complete_checkout_session(cs.id)
        act.credit_sessions[cs.id] = amount
        await sc.v1.customers.update_async(cus.id, params={"name": f"Renamed {tag}-{i}"})
    return act


async def credit_purchase(sc: stripe.StripeClient, admin: EmulatorAdmin, customer_id: str,
                          credits: int) -> tuple[str, str]:
    """A Stripe customer known to the application as `customer_id` (metadata) buying `credits`
    through Checkout: (Stripe customer id, checkout session id)."""
    cus = await sc.v1.customers.create_async(params={"name": customer_id, "metadata": {"customer_id": customer_id}})
    product = await sc.v1.products.create_async(params={"name": f"Credits {customer_id}"})
    price = await sc.v1.prices.create_async(params={"product": product.id, "currency": "usd", "unit_amount": credits})
    cs = await sc.v1.checkout.sessions.create_async(params={
        "mode": "payment", "customer": cus.id, "success_url": "https://example.com/ok",
        "line_items": [{"price": price.id, "quantity": 1}], "metadata": {"credits": str(credits)}})
    await admin.complete_checkout_session(cs.id)
    return cus.id, cs.id


# ---------------------------------------------------------------------------- comparison


async def stripe_state(sc: stripe.StripeClient, act: Activity) -> dict[str, Any]:
    """What Postgres must hold, read fresh from Stripe and mapped with the same functions."""
    subs = {}
    for sid in act.subscriptions:
        row = subscription_row((await sc.v1.subscriptions.retrieve_async(sid)).to_dict())
        subs[sid] = row.compared()
    customers = {}
    for cid in act.customers:
        c = customer_row((await sc.v1.customers.retrieve_async(cid)).to_dict())
        customers[cid] = (c.customer_id, c.email, c.name)
    invoices = {}
    for cid in act.customers:
        invoices.update(await stripe_invoices(sc, cid))
    credits: dict[str, int] = {}
    for cs_id in act.credit_sessions:
        grant = credit_grant((await sc.v1.checkout.sessions.retrieve_async(cs_id)).to_dict())
        assert grant is not None
        credits[grant.source] = grant.amount
    return {"subscriptions": subs, "customers": customers, "invoices": invoices, "credits": credits}


async def postgres_state(pool: asyncpg.Pool, act: Activity) -> dict[str, Any]:
    subs = {}
    for r in await pool.fetch("SELECT * FROM billing.subscriptions WHERE stripe_subscription_id = ANY($1)",
                              act.subscriptions):
        subs[r["stripe_subscription_id"]] = {
            "status": r["status"],
            "current_period_start": _iso(r["current_period_start"]),
            "current_period_end": _iso(r["current_period_end"]),
            "cancel_at_period_end": r["cancel_at_period_end"],
            "cancel_at": _iso(r["cancel_at"]), "canceled_at": _iso(r["canceled_at"]),
            "ended_at": _iso(r["ended_at"]), "items": r["items"],
        }
    customers = {r["stripe_customer_id"]: (r["customer_id"], r["email"], r["name"]) for r in await pool.fetch(
        "SELECT * FROM billing.customers WHERE stripe_customer_id = ANY($1)", act.customers)}
    invoices = await mirror_invoices(pool, act.customers)
    credits = {r["source"]: r["amount"] for r in await pool.fetch("SELECT source, amount FROM billing.credit_ledger")}
    return {"subscriptions": subs, "customers": customers, "invoices": invoices, "credits": credits}


async def stripe_invoices(sc: stripe.StripeClient, stripe_customer_id: str) -> dict[str, dict[str, Any]]:
    """Every invoice of a Stripe customer (every status), as the mirror must hold it."""
    out = {}
    params = {"customer": stripe_customer_id, "limit": 100}
    async for inv in (await sc.v1.invoices.list_async(params=params)).auto_paging_iter():
        r = invoice_row(inv.to_dict())
        out[r.stripe_invoice_id] = r.compared()
    return out


async def mirror_invoices(pool: asyncpg.Pool, stripe_customer_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The invoice mirror's rows of these Stripe customers, in the same shape."""
    return {r["stripe_invoice_id"]: local_compared(r, InvoiceRow.COMPARED) for r in await pool.fetch(
        "SELECT * FROM billing.invoices WHERE stripe_customer_id = ANY($1)", stripe_customer_ids)}


def _iso(v: Any) -> Any:
    return v.isoformat() if v is not None else None


async def balances(pool: asyncpg.Pool) -> dict[str, int]:
    return {r["customer_id"]: r["balance"] for r in await pool.fetch("SELECT * FROM billing.credit_balances")}


async def wait_until_settled(pool: asyncpg.Pool, admin: EmulatorAdmin, *, within: float = 60.0) -> None:
    """Until the emulator has no delivery in flight and the inbox has nothing `received`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        deliveries = await admin.webhook_deliveries()
        in_flight = deliveries.get("in_flight", 0)
        pending = await pool.fetchval("SELECT count(*) FROM billing.stripe_events WHERE status = 'received'")
        if not in_flight and not pending:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("webhooks did not settle: deliveries in flight or inbox rows still received")


async def all_events(sc: stripe.StripeClient) -> list[dict[str, Any]]:
    """Every event Stripe holds, oldest first."""
    out = []
    async for e in (await sc.v1.events.list_async(params={"limit": 100})).auto_paging_iter():
        out.append(e.to_dict(for_json=True))
    return list(reversed(out))
