"""Async meter errors (webhooks/meter_errors.py): Stripe accepts a push, then rejects it and
says so with a thin event to an event destination. The receiver marks the push failed within
seconds; once the cause is fixed, the next tick pushes the key again under a new identifier, and
Stripe counts the usage exactly once (the emulator's record)."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import httpx
import pytest

from stripe_emulator.webhooks import sign
from tests.integration.recon_helpers import ledger_by_key, run_tick, running_worker, seed_world
from tests.integration.webhook_helpers import receiver, webhook_settings
from webhooks.meter_errors import THIN_PATH

pytestmark = pytest.mark.integration

ERROR_REPORT = "v1.billing.meter.error_report_triggered"


async def _wait_failed(pool, customer_id: str, seconds: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        rows = await pool.fetch("SELECT identifier, status, error FROM billing.stripe_usage_pushes "
                                "WHERE customer_id = $1 ORDER BY planned_at", customer_id)
        if rows and all(r["status"] == "failed" for r in rows):
            return [dict(r) for r in rows]
        assert time.monotonic() < deadline, [dict(r) for r in rows]
        await asyncio.sleep(0.2)


async def test_an_async_meter_error_fails_the_push_and_the_next_pass_fixes_it_once(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue, webhook_secret):
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, events_per_key=2)
    cid, real_sid = world.customers[0]
    typo = f"cus_typo{world.tag}"
    # The application mapped the customer to an id Stripe does not know: pushes are accepted
    # (200) and rejected later.
    await clean_db.execute("UPDATE billing.customers SET stripe_customer_id = $2 WHERE customer_id = $1", cid, typo)
    settings = webhook_settings(postgres_dsn, emulator, webhook_secret, task_queue)
    await emulator_admin.configure(webhook_secret=webhook_secret, webhook_signature_clock="real")
    async with receiver(settings, temporal_env.client) as url, running_worker(temporal_env.client, settings, task_queue):
        dest = await stripe_client.v2.core.event_destinations.create_async(params={
            "name": "meter errors", "type": "webhook_endpoint", "event_payload": "thin",
            "enabled_events": [ERROR_REPORT], "webhook_endpoint": {"url": url + THIN_PATH}})
        assert dest.id.startswith("ed_")

        # The tick pushes from our outbox without reading Stripe: accepted, then rejected.
        first = await run_tick(temporal_env.client, task_queue)
        assert first.counts.pushed == len(world.meters)
        failed = await _wait_failed(clean_db, cid)
        assert all("meter_event_customer_not_found" in r["error"] for r in failed)
        reports = await clean_db.fetch("SELECT processed_at, marked, identifiers FROM billing.meter_error_reports")
        assert reports and all(r["processed_at"] is not None for r in reports)
        assert {i for r in reports for i in r["identifiers"]} == {r["identifier"] for r in failed}
        queued = await clean_db.fetch("SELECT customer_id, meter, reason FROM billing.usage_sync_queue")
        assert {(q["customer_id"], q["meter"]) for q in queued} == {(cid, m) for m in world.meters}
        # The rejected pushes count toward the Stripe circuit breaker (flushed within seconds).
        for _ in range(50):
            counted_errors = await clean_db.fetchval(
                "SELECT coalesce(sum((by_reason->>'meter_error')::int), 0) FROM billing.stripe_call_tally")
            if counted_errors >= len(world.meters):
                break
            await asyncio.sleep(0.2)
        assert counted_errors == len(world.meters)

        # The mapping is fixed; the next pass pushes the usage again, under new identifiers.
        await clean_db.execute("UPDATE billing.customers SET stripe_customer_id = $2 WHERE customer_id = $1",
                               cid, real_sid)
        second = await run_tick(temporal_env.client, task_queue)
        assert second.counts.queued_keys == len(world.meters) and second.counts.pushed == len(world.meters)
        assert await clean_db.fetchval("SELECT count(*) FROM billing.usage_sync_queue") == 0

    counted = await emulator_admin.meter_events(customer=real_sid)
    ledger = await ledger_by_key(clean_db, world)
    for meter in world.meters:
        events = [e for e in counted if e["event_name"] == meter]
        assert len(events) == 1, events  # one push per key: no double push
        assert Decimal(events[0]["payload"]["value"]) == ledger[(cid, meter, world.end)]
        assert events[0]["identifier"] not in {r["identifier"] for r in failed}


async def test_thin_endpoint_refuses_bad_signatures_and_snapshot_events(
        clean_db, emulator, postgres_dsn, temporal_env, task_queue, webhook_secret):
    settings = webhook_settings(postgres_dsn, emulator, webhook_secret, task_queue)
    thin = json.dumps({"id": "evt_test_1", "object": "v2.core.event", "type": ERROR_REPORT,
                       "created": "2026-11-29T00:00:00.000Z", "livemode": False,
                       "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"}})
    snapshot = json.dumps({"id": "evt_2", "object": "event", "type": "customer.created", "created": 1,
                           "data": {"object": {"id": "cus_1"}}})
    async with receiver(settings, None) as url, httpx.AsyncClient() as http:
        def post(body: str, secret: str = webhook_secret):
            return http.post(url + THIN_PATH, content=body,
                             headers={"Stripe-Signature": sign(body, secret, int(time.time()))})
        bad = await post(thin, secret="whsec_wrong")
        assert bad.status_code == 400 and "signature" in bad.json()["error"]
        snap = await post(snapshot)
        assert snap.status_code == 400 and "thin event" in snap.json()["error"]
        other = await post(thin.replace(ERROR_REPORT, "v1.billing.meter.created"))
        assert other.status_code == 200 and other.json()["ignored"] is True
        assert await clean_db.fetchval("SELECT count(*) FROM billing.meter_error_reports") == 0
        # Stored even though the full event cannot be fetched (the emulator has no evt_test_1):
        # answered 200, left open for the tick's sweep.
        stored = await post(thin)
        assert stored.status_code == 200, stored.text
    row = await clean_db.fetchrow("SELECT processed_at, marked FROM billing.meter_error_reports WHERE event_id = 'evt_test_1'")
    assert row is not None
