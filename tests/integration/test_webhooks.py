"""Webhook intake, processing and replay against the real parts: the receiver over HTTP, the
emulator delivering signed events, the dev server, a worker and Postgres."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid

import httpx
import pytest

from common.types import Mode
from devstack.processes import free_port
from stripe_emulator.webhooks import sign
from tests.integration.recon_helpers import running_worker
from tests.integration.webhook_helpers import (
    all_events,
    balances,
    billing_scenario,
    postgres_state,
    receiver,
    stripe_state,
    wait_until_settled,
    webhook_settings,
    webhook_stack,
)
from webhooks.types import EventStatus, ReplayResult, ReplayWebhooksInput

pytestmark = pytest.mark.integration


async def replay(client, task_queue: str, mode: Mode = Mode.APPLY, **kw) -> ReplayResult:
    return await client.execute_workflow(
        "ReplayWebhooks", ReplayWebhooksInput(mode=mode, **kw), id=f"replay-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue, result_type=ReplayResult)


async def inbox(pool) -> dict[str, str]:
    return {r["event_id"]: r["status"] for r in await pool.fetch("SELECT event_id, status FROM billing.stripe_events")}


async def wait_processed(pool, n_events: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = await inbox(pool)
        if len(rows) >= n_events and EventStatus.RECEIVED.value not in rows.values():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"inbox not processed: {sorted(set((await inbox(pool)).values()))}")


async def test_refused_deliveries_leave_no_row(temporal_env, postgres_dsn, emulator, emulator_admin,
                                               stripe_client, webhook_secret, task_queue, clean_db):
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue, register=False, with_worker=False) as stack:
        cus = await stripe_client.v1.customers.create_async(params={"name": "x"})
        event = (await all_events(stripe_client))[-1]
        assert event["data"]["object"]["id"] == cus.id
        body = json.dumps(event)
        now = int(time.time())
        cases = {
            "forged": (body, {"Stripe-Signature": sign(body, "whsec_not_the_secret", now)}),
            "stale": (body, {"Stripe-Signature": sign(body, webhook_secret, now - 301)}),
            "tampered": (body.replace(cus.id, "cus_other"), {"Stripe-Signature": sign(body, webhook_secret, now)}),
            "unsigned": (body, {}),
            "garbage header": (body, {"Stripe-Signature": "nonsense"}),
            "malformed JSON": ("{not json", {"Stripe-Signature": sign("{not json", webhook_secret, now)}),
            "not an event": ('{"object": "customer"}',
                             {"Stripe-Signature": sign('{"object": "customer"}', webhook_secret, now)}),
        }
        async with httpx.AsyncClient() as http:
            for name, (payload, headers) in cases.items():
                r = await http.post(stack.endpoint, content=payload, headers=headers)
                assert r.status_code == 400, (name, r.text)
                assert r.json()["error"], name
            big = "x" * (stack.settings.webhook_max_body_bytes + 1)
            r = await http.post(stack.endpoint, content=big, headers={"Stripe-Signature": sign(big, webhook_secret, now)})
            assert r.status_code == 413
        assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_events") == 0
        # The very same event, properly signed, is accepted: the refusals were about the delivery.
        assert (await stack.deliver(event)).status_code == 200
        assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_events") == 1


async def test_live_deliveries_make_postgres_match_stripe(temporal_env, postgres_dsn, emulator, emulator_admin,
                                                          stripe_client, webhook_secret, task_queue, clean_db):
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue):
        act = await billing_scenario(stripe_client, emulator_admin, n_customers=3)
        await wait_until_settled(clean_db, emulator_admin)
        n = len(await all_events(stripe_client))
        await wait_processed(clean_db, n)
    statuses = await inbox(clean_db)
    assert len(statuses) == n and set(statuses.values()) <= {"processed", "ignored"}
    ignored = {r["type"] for r in await clean_db.fetch("SELECT type FROM billing.stripe_events WHERE status = 'ignored'")}
    assert "product.created" in ignored and "customer.subscription.created" not in ignored
    assert await postgres_state(clean_db, act) == await stripe_state(stripe_client, act)
    # Statuses the scenario produced, seen through the webhooks.
    subs = {r["status"] for r in await clean_db.fetch("SELECT status FROM billing.subscriptions")}
    assert {"active", "past_due", "canceled"} <= subs
    assert sum((await balances(clean_db)).values()) == sum(act.credit_sessions.values())


async def test_outage_then_one_replay_matches_stripe_and_grants_once(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    client = temporal_env.client
    async with webhook_stack(client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue) as stack:
        await emulator_admin.configure(webhook_drop_rate=0.3, seed=11)
        act = await billing_scenario(stripe_client, emulator_admin, n_customers=6)
        await wait_until_settled(clean_db, emulator_admin)
        events = await all_events(stripe_client)
        dropped = [d for d in (await emulator_admin.webhook_deliveries())["data"] if d["error"] == "dropped"]
        received = await inbox(clean_db)
        assert len(received) < len(events) and len(dropped) == len(events) - len(received)
        assert await postgres_state(clean_db, act) != await stripe_state(stripe_client, act)

        dry = await replay(client, task_queue, Mode.DRY_RUN)
        dropped_ids = {d["event"] for d in dropped}
        # A delivery that timed out on the emulator's side may still land late; the dry-run
        # lists exactly what the inbox misses at its own moment.
        missing = dropped_ids - set(await inbox(clean_db))
        assert dry.counts.never_received == len(missing) == dry.counts.pending > 0
        assert set(dry.sample) == missing
        assert dry.counts.seen == len(events) == dry.counts.never_received + dry.counts.already_processed
        assert set((await inbox(clean_db)).values()) <= {"processed", "ignored"}  # dry-run wrote nothing

        first = await replay(client, task_queue)
        assert first.counts.seen == len(events)
        assert first.counts.never_received == len(missing)
        assert first.counts.replayed + first.counts.ignored == len(missing) and first.counts.failed == 0
        after_first = await postgres_state(clean_db, act)
        assert after_first == await stripe_state(stripe_client, act)
        ledger = await clean_db.fetch("SELECT source, amount FROM billing.credit_ledger ORDER BY source")
        assert len(ledger) == len(act.credit_sessions)  # exactly one grant per purchase
        assert sum((await balances(clean_db)).values()) == sum(act.credit_sessions.values())

        second = await replay(client, task_queue)
        assert second.counts.never_received == 0 and second.counts.replayed == 0
        assert second.counts.already_processed == len(events)
        assert await postgres_state(clean_db, act) == after_first
        assert await clean_db.fetch("SELECT source, amount FROM billing.credit_ledger ORDER BY source") == ledger
        assert set((await inbox(clean_db)).values()) <= {"processed", "ignored"}
        assert stack.url


async def test_three_shuffled_deliveries_equal_one_in_order(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue, register=False) as stack:
        act = await billing_scenario(stripe_client, emulator_admin, n_customers=3)
        events = await all_events(stripe_client)

        for e in events:  # once, in order
            assert (await stack.deliver(e)).status_code == 200
        await wait_processed(clean_db, len(events))
        in_order = await postgres_state(clean_db, act)
        in_order_balances = await balances(clean_db)
        tables = "billing.stripe_events, billing.subscriptions, billing.invoices, billing.credit_ledger, " \
                 "billing.credit_balances, billing.audit_log, billing.customers"
        await clean_db.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")

        shuffled = events * 3
        random.Random(5).shuffle(shuffled)
        gate = asyncio.Semaphore(8)

        async def deliver(e):
            async with gate:
                r = await stack.deliver(e)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(deliver(e) for e in shuffled))
        await wait_processed(clean_db, len(events))
        assert await postgres_state(clean_db, act) == in_order == await stripe_state(stripe_client, act)
        assert await balances(clean_db) == in_order_balances
        deliveries = {r["deliveries"] for r in await clean_db.fetch("SELECT deliveries FROM billing.stripe_events")}
        assert deliveries == {3}
        assert await clean_db.fetchval("SELECT count(*) FROM billing.credit_ledger") == len(act.credit_sessions)


async def test_stored_and_answered_while_temporal_is_down_then_swept_by_replay(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue,
        clean_db, monkeypatch):
    settings = webhook_settings(postgres_dsn, emulator, webhook_secret, task_queue)
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    cus = await stripe_client.v1.customers.create_async(params={"name": "Down", "metadata": {"customer_id": "app-down"}})
    event = (await all_events(stripe_client))[-1]
    async with receiver(settings, None) as url:
        body = json.dumps(event)
        async with httpx.AsyncClient() as http:
            r = await http.post(url + "/webhooks/stripe", content=body,
                                headers={"Stripe-Signature": sign(body, webhook_secret, int(time.time()))})
            ready = await http.get(url + "/health/ready")
    assert r.status_code == 200 and r.json()["processing"] == "deferred"
    assert ready.status_code == 200 and ready.json()["temporal"].startswith("unreachable")
    assert await inbox(clean_db) == {event["id"]: "received"}
    monkeypatch.delenv("TEMPORAL_ADDRESS")

    async with running_worker(temporal_env.client, settings, task_queue):
        result = await replay(temporal_env.client, task_queue)
    assert result.counts.replayed == 1 and result.counts.never_received == 0
    assert await inbox(clean_db) == {event["id"]: "processed"}
    assert await clean_db.fetchval("SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1",
                                   cus.id) == "app-down"


async def test_permanent_failure_is_kept_failed_then_replayed_once_fixed(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    # Our customer app-7 is linked to another Stripe customer; a new Stripe customer claims it.
    await clean_db.execute(
        "INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('app-7', 'cus_elsewhere')")
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue):
        cus = await stripe_client.v1.customers.create_async(params={"name": "Seven", "metadata": {"customer_id": "app-7"}})
        await wait_until_settled(clean_db, emulator_admin)
        row = await clean_db.fetchrow("SELECT status, error FROM billing.stripe_events WHERE object_id = $1", cus.id)
        assert row["status"] == "failed"
        assert "app-7 is linked to cus_elsewhere" in row["error"]
        assert await clean_db.fetchval("SELECT stripe_customer_id FROM billing.customers WHERE customer_id = 'app-7'") \
            == "cus_elsewhere"  # nothing partial

        still = await replay(temporal_env.client, task_queue)
        assert still.counts.failed == 1 and "app-7 is linked" in still.failures[0]

        await clean_db.execute("UPDATE billing.customers SET stripe_customer_id = NULL WHERE customer_id = 'app-7'")
        fixed = await replay(temporal_env.client, task_queue)
        assert fixed.counts.replayed == 1 and fixed.counts.failed == 0
    assert await clean_db.fetchval(
        "SELECT stripe_customer_id FROM billing.customers WHERE customer_id = 'app-7'") == cus.id


async def test_replay_input_is_validated(temporal_env, task_queue):
    from datetime import UTC, datetime

    with pytest.raises(ValueError, match="not after since"):
        ReplayWebhooksInput(since=datetime(2026, 11, 2, tzinfo=UTC), until=datetime(2026, 11, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="no time zone"):
        ReplayWebhooksInput(since=datetime(2026, 11, 2))
    with pytest.raises(ValueError, match="wildcard"):
        ReplayWebhooksInput(types=["customer.*", "invoice.paid"])
    with pytest.raises(ValueError):
        ReplayWebhooksInput(days=31)
