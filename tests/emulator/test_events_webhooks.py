"""Events API and webhook deliveries."""

from __future__ import annotations

import asyncio
import json

import pytest
import stripe

from .helpers import make_customer, make_meter

SECRET = "whsec_test_contract_secret"


async def test_events_for_state_changes(client, admin):
    cus = await make_customer(client)
    await client.v1.customers.update_async(
        cus.id, params={"name": "Ada", "metadata": {"tier": "gold"}}
    )
    meter = await make_meter(client)
    await client.v1.billing.meters.deactivate_async(meter.id)
    await client.v1.customers.delete_async(cus.id)
    events = await client.v1.events.list_async(params={"limit": 100})
    types = [e.type for e in events.data]
    assert types == [
        "customer.deleted",
        "billing.meter.deactivated",
        "billing.meter.created",
        "customer.updated",
        "customer.created",
    ]
    updated = events.data[3]
    assert updated.data.object.name == "Ada"
    assert updated.data.previous_attributes.to_dict() == {"name": None, "metadata": {"tier": None}}
    assert updated.api_version == "2026-10-28.endive"
    assert updated.request.id.startswith("req_") and updated.request.idempotency_key
    assert updated.id.startswith("evt_") and updated.livemode is False
    got = await client.v1.events.retrieve_async(updated.id)
    assert got.type == "customer.updated"


async def test_events_filters_and_retention(client, admin):
    await admin.freeze_clock(True)  # the exact `created` filter below must not race a second tick
    c1 = await make_customer(client)
    await admin.advance_clock(10 * 86400)
    await make_customer(client, "x@y.io")
    await make_meter(client)
    t_now = await admin.now()
    wildcard = await client.v1.events.list_async(params={"type": "customer.*"})
    assert [e.type for e in wildcard.data] == ["customer.created", "customer.created"]
    several = await client.v1.events.list_async(
        params={"types": ["billing.meter.created", "customer.created"]}
    )
    assert len(several.data) == 3
    recent = await client.v1.events.list_async(params={"created": {"gte": t_now - 60}})
    assert len(recent.data) == 2
    exact = await client.v1.events.list_async(
        params={"created": t_now - 10 * 86400, "type": "customer.created"}
    )
    assert [e.data.object.id for e in exact.data] == [c1.id]
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.events.list_async(
            params={"type": "customer.created", "types": ["customer.created"]}
        )
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.events.list_async(params={"types": [f"t{i}" for i in range(21)]})
    old_id = (
        (await client.v1.events.list_async(params={"created": {"lt": t_now - 86400}})).data[0].id
    )
    await admin.advance_clock(21 * 86400)  # first event now 31 days old
    after = await client.v1.events.list_async(params={"limit": 100})
    assert old_id not in [e.id for e in after.data] and len(after.data) == 2
    with pytest.raises(stripe.InvalidRequestError) as gone:
        await client.v1.events.retrieve_async(old_id)
    assert gone.value.http_status == 404


async def _endpoint(client, receiver, events=("*",)):
    return await client.v1.webhook_endpoints.create_async(
        params={"url": receiver.url, "enabled_events": list(events)}
    )


async def test_webhook_delivered_and_signature_verifies(client, admin, receiver):
    await admin.configure(webhook_secret=SECRET, webhook_signature_clock="emulator")
    we = await _endpoint(client, receiver, ["customer.created"])
    assert we.secret == SECRET and we.id.startswith("we_")
    cus = await make_customer(client)
    await make_meter(client)  # not subscribed: not delivered
    await receiver.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    event = stripe.Webhook.construct_event(body.decode(), headers["stripe-signature"], SECRET)
    assert event.type == "customer.created" and event.data.object.id == cus.id
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), headers["stripe-signature"], "whsec_wrong")
    await asyncio.sleep(0.05)
    ok = await client.v1.events.list_async(
        params={"delivery_success": True, "type": "customer.created"}
    )
    assert [e.id for e in ok.data] == [event.id] and ok.data[0].pending_webhooks == 0


async def test_generated_secret_and_endpoint_crud(client, receiver):
    we = await _endpoint(client, receiver)
    assert we.secret.startswith("whsec_")
    upd = await client.v1.webhook_endpoints.update_async(
        we.id, params={"disabled": True, "description": "d"}
    )
    assert upd.status == "disabled" and "secret" not in upd
    assert [w.id for w in (await client.v1.webhook_endpoints.list_async()).data] == [we.id]
    assert (await client.v1.webhook_endpoints.retrieve_async(we.id)).description == "d"
    deleted = await client.v1.webhook_endpoints.delete_async(we.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.webhook_endpoints.retrieve_async(we.id)


async def test_webhook_retried_after_failing_receiver(client, admin, receiver):
    we = await _endpoint(client, receiver)
    receiver.statuses.extend([500, 503])
    await make_customer(client)
    await receiver.wait_for(3)
    bodies = {json.loads(b)["id"] for _, b in receiver.received}
    assert len(bodies) == 1
    ev = stripe.Webhook.construct_event(
        receiver.received[-1][1].decode(), receiver.received[-1][0]["stripe-signature"], we.secret
    )
    await asyncio.sleep(0.05)
    got = await client.v1.events.retrieve_async(ev.id)
    assert got.pending_webhooks == 0
    log = (await admin.webhook_deliveries())["data"]
    assert [d["status"] for d in log] == [500, 503, 200]


async def test_webhook_gives_up_after_schedule(client, admin, receiver):
    await admin.configure(webhook_retry_schedule_seconds=[0.05])
    await _endpoint(client, receiver)
    receiver.statuses.extend([500, 500, 500])
    await make_customer(client)
    await receiver.wait_for(2)
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 2
    failed = await client.v1.events.list_async(params={"delivery_success": False})
    assert len(failed.data) == 1 and failed.data[0].pending_webhooks == 1


async def test_webhook_outage_switch_drops_and_never_resends(client, admin, receiver):
    await _endpoint(client, receiver)
    await admin.configure(drop_webhooks=True)
    lost = await make_customer(client, "lost@x.io")
    await asyncio.sleep(0.3)
    assert receiver.received == []
    await admin.configure(drop_webhooks=False)
    await make_customer(client, "seen@x.io")
    await receiver.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1
    assert json.loads(receiver.received[0][1])["data"]["object"]["email"] == "seen@x.io"
    failed = await client.v1.events.list_async(params={"delivery_success": False})
    assert [e.data.object.id for e in failed.data] == [lost.id]


async def test_unknown_customer_error_report_event(client, admin):
    await make_meter(client)
    await client.v1.billing.meter_events.create_async(
        params={
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": "cus_nobody", "value": "1"},
        }
    )
    reports = await client.v1.events.list_async(
        params={"type": "v1.billing.meter.error_report_triggered"}
    )
    assert reports.data[0].data.object.reason.error_code == "meter_event_customer_not_found"
