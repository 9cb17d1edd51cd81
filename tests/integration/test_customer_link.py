"""`billing.link_customer`: the application maps its customer id to a Stripe customer while the
webhook receiver may already have created a placeholder row for it (customer_id = the Stripe id,
when the Stripe customer has no `metadata.customer_id`). Through the real stack: the emulator
delivers over HTTP to the real receiver, a worker processes the events, Postgres holds the rows."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.customers import CustomerLinkConflict, LinkOutcome, link_customer
from billing.ingest import UsageEvent, ingest
from tests.integration.webhook_helpers import wait_until_settled, webhook_stack

pytestmark = pytest.mark.integration


async def stripe_customer_with_activity(sc, admin, price_id: str, credits_price: str) -> str:
    """A Stripe customer without metadata, a subscription and a credit purchase: events whose
    handlers create the customer's row (and rows naming it) on their own."""
    cus = await sc.v1.customers.create_async(params={"name": "no metadata"})
    await sc.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": price_id}]})
    cs = await sc.v1.checkout.sessions.create_async(params={
        "mode": "payment", "customer": cus.id, "success_url": "https://example.com/ok",
        "line_items": [{"price": credits_price, "quantity": 1}], "metadata": {"credits": "500"}})
    await admin.complete_checkout_session(cs.id)
    return cus.id


async def test_link_while_webhooks_arrive_ends_with_the_applications_id(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    pool, sc = clean_db, stripe_client
    tag = uuid.uuid4().hex[:6]
    product = await sc.v1.products.create_async(params={"name": tag})
    price = await sc.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 900, "recurring": {"interval": "month"}})
    credits = await sc.v1.prices.create_async(params={"product": product.id, "currency": "usd", "unit_amount": 500})
    rng = random.Random(7)
    n = 9
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, sc, webhook_secret,
                             task_queue):
        stripe_ids = [await stripe_customer_with_activity(sc, emulator_admin, price.id, credits.id) for _ in range(n)]
        app_ids = [f"app-{tag}-{i}" for i in range(n)]

        async def link(i: int) -> LinkOutcome:
            # Spread over the deliveries and their processing: before, during and after.
            await asyncio.sleep(rng.random() * 1.5)
            return await link_customer(pool, app_ids[i], stripe_ids[i])

        outcomes = await asyncio.gather(*(link(i) for i in range(n)))
        await wait_until_settled(pool, emulator_admin)
        # Linked again, from both sides of the race: nothing changes.
        assert {await link_customer(pool, a, s) for a, s in zip(app_ids, stripe_ids, strict=True)} == {
            LinkOutcome.UNCHANGED}

        rows = {r["stripe_customer_id"]: r["customer_id"] for r in await pool.fetch(
            "SELECT * FROM billing.customers WHERE stripe_customer_id = ANY($1) OR customer_id = ANY($1)", stripe_ids)}
        assert rows == dict(zip(stripe_ids, app_ids, strict=True))  # no placeholder left, none stolen
        for table in ("subscriptions", "credit_ledger", "credit_balances"):
            owners = {r["customer_id"] for r in await pool.fetch(f"SELECT customer_id FROM billing.{table}")}
            assert owners == set(app_ids), table
        assert await pool.fetchval("SELECT sum(balance) FROM billing.credit_balances") == 500 * n
        assert await pool.fetchval("SELECT count(*) FROM billing.stripe_events WHERE status NOT IN "
                                   "('processed', 'ignored')") == 0
        rekeyed = outcomes.count(LinkOutcome.REKEYED)
        assert set(outcomes) <= {LinkOutcome.CREATED, LinkOutcome.REKEYED}
        audit = await pool.fetch("SELECT * FROM billing.audit_log WHERE action = 'customer.link'")
        assert len(audit) == rekeyed
        for r in audit:
            assert r["before"]["customer_id"] == r["before"]["stripe_customer_id"]
            # rows_moved is 0 when the link came between customer.created and the other events.
            assert r["after"]["customer_id"] == r["entity_id"] and r["after"]["rows_moved"] >= 0

        # The receiver never takes an application's mapping: a Stripe customer whose metadata
        # claims another id keeps the application's.
        await sc.v1.customers.update_async(stripe_ids[0], params={"metadata": {"customer_id": "someone-else"},
                                                                  "name": "renamed"})
        await wait_until_settled(pool, emulator_admin)
        row = await pool.fetchrow("SELECT * FROM billing.customers WHERE stripe_customer_id = $1", stripe_ids[0])
        assert (row["customer_id"], row["name"]) == (app_ids[0], "renamed")

        # Conflicts are refused and write nothing.
        with pytest.raises(CustomerLinkConflict, match="is linked to customer"):
            await link_customer(pool, f"other-{tag}", stripe_ids[1])
        with pytest.raises(CustomerLinkConflict, match=f"customer {app_ids[1]} is linked to Stripe customer"):
            await link_customer(pool, app_ids[1], f"cus_new{tag}")
        assert {r["stripe_customer_id"]: r["customer_id"] for r in await pool.fetch(
            "SELECT * FROM billing.customers WHERE stripe_customer_id = ANY($1)", stripe_ids)} == rows


async def test_link_merges_a_placeholder_into_the_applications_existing_customer(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    """The application created its customer (no Stripe customer yet) and logged usage; the Stripe
    customer it created later, without metadata, got a placeholder through the webhooks (with a
    credit grant). Linking merges them: one row, every row under the application's id, balances
    added up."""
    pool, sc = clean_db, stripe_client
    tag = uuid.uuid4().hex[:6]
    app_id = f"merge-{tag}"
    assert await link_customer(pool, app_id, None) == LinkOutcome.CREATED
    assert await link_customer(pool, app_id, None) == LinkOutcome.UNCHANGED
    async with pool.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"u-{tag}", customer_id=app_id, meter="api_requests",
                                       quantity=Decimal(3), occurred_at=datetime.now(UTC))])
    await pool.execute("INSERT INTO billing.credit_balances (customer_id, balance) VALUES ($1, 40)", app_id)
    await pool.execute("""INSERT INTO billing.credit_ledger (customer_id, amount, source, reason)
                          VALUES ($1, 40, $2, 'seed')""", app_id, f"seed:{tag}")
    product = await sc.v1.products.create_async(params={"name": tag})
    price = await sc.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 900, "recurring": {"interval": "month"}})
    credits = await sc.v1.prices.create_async(params={"product": product.id, "currency": "usd", "unit_amount": 500})
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, sc, webhook_secret,
                             task_queue):
        cus = await stripe_customer_with_activity(sc, emulator_admin, price.id, credits.id)
        await wait_until_settled(pool, emulator_admin)
        assert await pool.fetchval("SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1",
                                   cus) == cus  # the placeholder
        # Usage under both ids on the same day, and the same key queued for the tick under both:
        # the rollup follows the events (triggers), the queue is merged.
        async with pool.acquire() as conn:
            await ingest(conn, [UsageEvent(request_id=f"p-{tag}", customer_id=cus, meter="api_requests",
                                           quantity=Decimal(2), occurred_at=datetime.now(UTC))])
        for who in (app_id, cus):
            await pool.execute("INSERT INTO billing.usage_sync_queue (customer_id, meter, usage_day, reason) "
                               "VALUES ($1, 'api_requests', (now() AT TIME ZONE 'UTC')::date, 'meter_error')", who)
        await pool.execute("SET billing.actor = 'app-deploy'")
        assert await link_customer(pool, app_id, cus) == LinkOutcome.REKEYED
        assert await link_customer(pool, app_id, cus) == LinkOutcome.UNCHANGED

    assert [dict(r) for r in await pool.fetch(
        "SELECT customer_id, stripe_customer_id FROM billing.customers WHERE customer_id IN ($1, $2)", app_id, cus)] \
        == [{"customer_id": app_id, "stripe_customer_id": cus}]
    assert await pool.fetchval("SELECT balance FROM billing.credit_balances WHERE customer_id = $1", app_id) == 540
    assert await pool.fetchval("SELECT sum(amount) FROM billing.credit_ledger WHERE customer_id = $1", app_id) == 540
    assert await pool.fetchval("SELECT count(*) FROM billing.usage_events WHERE customer_id = $1", app_id) == 2
    rollup = {r["customer_id"]: r["quantity"] for r in await pool.fetch(
        "SELECT customer_id, sum(quantity) AS quantity FROM billing.usage_daily WHERE customer_id IN ($1, $2) "
        "GROUP BY 1", app_id, cus)}
    assert rollup[app_id] == 5 and rollup.get(cus, 0) == 0  # moved once, never counted twice
    assert [r["customer_id"] for r in await pool.fetch(
        "SELECT customer_id FROM billing.usage_sync_queue WHERE customer_id IN ($1, $2)", app_id, cus)] == [app_id]
    assert await pool.fetchval("SELECT customer_id FROM billing.subscriptions WHERE stripe_customer_id = $1",
                               cus) == app_id
    row = await pool.fetchrow("SELECT * FROM billing.audit_log WHERE action = 'customer.link'")
    assert row["after"]["merged_into_existing"] is True and row["after"]["rows_moved"] >= 3
    with pytest.raises(Exception, match="must not be empty"):
        await link_customer(pool, " ", cus)


async def test_every_table_keyed_by_customer_is_merged_by_link_customer(clean_db):
    """move_customer_rows merges the tables whose unique keys include customer_id and updates the
    rest; a new table with such a key must be added to it (this test names the list)."""
    rows = await clean_db.fetch(
        """
        SELECT DISTINCT t.relname AS table_name
          FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey)
         WHERE n.nspname = 'billing' AND i.indisunique AND a.attname = 'customer_id'
        """)
    assert {r["table_name"] for r in rows} == {"customers", "credit_balances", "usage_counters",
                                               "usage_daily", "usage_sync_queue"}
