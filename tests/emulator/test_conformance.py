"""FACTS.md conformance, bullet by bullet, through the official SDK (+ EmulatorAdmin).

Each test names the FACTS bullet it proves; docs/emulator.md#conformance maps them.
Boundary tests freeze the emulator clock so "exactly 35 days" means exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re

import httpx
import pytest
import stripe

from .helpers import API_KEY, make_client, make_customer, make_meter, push

DAY = 86400
SECRET = "whsec_conformance"


def _summaries(client, meter_id, **params):
    return client.v1.billing.meters.event_summaries.list_async(meter_id, params=params)


# -- client side: retries -----------------------------------------------------------------


async def test_client_default_zero_retries(emulator_url, admin):
    """StripeClient retries 0 times unless max_network_retries is given."""
    await admin.configure(faults=[{"path_prefix": "/v1/customers", "status": 500, "max_count": 1}])
    plain = stripe.StripeClient(API_KEY, base_addresses={"api": emulator_url})
    with pytest.raises(stripe.APIError) as exc:
        await plain.v1.customers.create_async(params={"email": "a@x.io"})
    assert exc.value.http_status == 500
    assert (await admin.get_config())["faults"][0]["injected"] == 1
    assert (await plain.v1.customers.list_async()).data == []


async def test_retry_rules_plain_429_lock_timeout_and_409(emulator_url, admin):
    """Plain 429 is not retried; Should-Retry: true (lock_timeout) and 409 are retried."""
    retrying = make_client(emulator_url, retries=2)
    await admin.configure(faults=[{"path_prefix": "/v1/customers", "status": 429, "max_count": 1}])
    with pytest.raises(stripe.RateLimitError) as rl:
        await retrying.v1.customers.create_async(params={"email": "a@x.io"})
    assert (
        rl.value.json_body["error"]["code"] == "rate_limit"
        and "Stripe-Should-Retry" not in rl.value.headers
    )
    assert (await admin.get_config())["faults"][0]["injected"] == 1  # tried once only

    await admin.configure(
        faults=[
            {"path_prefix": "/v1/customers", "status": 429, "code": "lock_timeout", "max_count": 1}
        ]
    )
    plain = make_client(emulator_url)
    with pytest.raises(stripe.RateLimitError) as lock:
        await plain.v1.customers.create_async(params={"email": "b@x.io"})
    assert lock.value.json_body["error"]["code"] == "lock_timeout"
    assert lock.value.headers["Stripe-Should-Retry"] == "true"
    await admin.configure(
        faults=[
            {"path_prefix": "/v1/customers", "status": 429, "code": "lock_timeout", "max_count": 1}
        ]
    )
    cus = await retrying.v1.customers.create_async(params={"email": "c@x.io"})
    assert cus.email == "c@x.io"

    # the same key in flight -> 409 idempotency_key_in_use; the SDK retries it (same key)
    # and gets the first request's saved answer
    await admin.configure(
        faults=[
            {"method": "POST", "path_prefix": "/v1/customers", "status": None, "latency_ms": 250}
        ]
    )
    opts = {"idempotency_key": "inflight"}
    first = asyncio.create_task(
        retrying.v1.customers.create_async(params={"email": "d@x.io"}, options=opts)
    )
    await asyncio.sleep(0.1)
    second = await retrying.v1.customers.create_async(params={"email": "d@x.io"}, options=opts)
    assert second.id == (await first).id
    assert second.last_response.headers["Idempotent-Replayed"] == "true"


async def test_meter_events_share_the_test_mode_bucket(client, admin):
    """Test mode: meter events count toward the one global limit (25/s by default)."""
    assert (await admin.get_config())["rate_limit"] == 0  # tests run unlimited by default
    await make_meter(client)
    cus = await make_customer(client)
    await admin.configure(rate_limit=2)
    await client.v1.customers.list_async()
    await client.v1.customers.list_async()
    with pytest.raises(stripe.RateLimitError) as exc:
        await push(client, cus.id)
    assert exc.value.headers["Stripe-Rate-Limited-Reason"] == "global-rate"
    assert await admin.meter_events() == []


# -- errors, request ids ----------------------------------------------------------------------


async def test_error_mapping_and_request_id_everywhere(client, admin, emulator_url):
    """429 -> RateLimitError, 402 -> CardError, 401, 404, 400; every answer has Request-Id."""
    ids = []
    cus = await make_customer(client)
    ids.append(cus.last_response.request_id)
    with pytest.raises(stripe.InvalidRequestError) as e404:
        await client.v1.customers.retrieve_async("cus_nope")
    with pytest.raises(stripe.InvalidRequestError) as e400:
        await client.v1.customers.list_async(params={"limit": 0})
    bad = stripe.StripeClient("pk_test_publishable", base_addresses={"api": emulator_url})
    with pytest.raises(stripe.AuthenticationError) as e401:
        await bad.v1.customers.list_async()
    await admin.configure(faults=[{"path_prefix": "/v1/customers", "status": 402, "max_count": 1}])
    with pytest.raises(stripe.CardError) as e402:
        await client.v1.customers.list_async()
    assert e402.value.code == "card_declined" and e402.value.error.type == "card_error"
    await admin.configure(faults=[], rate_limit=1)
    await client.v1.customers.list_async()
    with pytest.raises(stripe.RateLimitError) as e429:
        await client.v1.customers.list_async()
    await admin.configure(rate_limit=0)
    for e, status in ((e404, 404), (e400, 400), (e401, 401), (e402, 402), (e429, 429)):
        assert e.value.http_status == status
        body = e.value.json_body["error"]
        assert set(body) == {"type", "code", "message", "param", "doc_url", "request_log_url"}
        ids.append(e.value.request_id)
    assert all(i and i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)
    # an unsupported verb is still a Stripe 404 with a Request-Id (not a bare 405)
    async with httpx.AsyncClient() as h:
        resp = await h.put(
            f"{emulator_url}/v1/customers", headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert resp.status_code == 404 and resp.headers["request-id"].startswith("req_")


async def test_legacy_usage_records_removed(client):
    """Usage records were removed in 2025-03-31.basil: the routes don't exist."""
    for path in (
        "/v1/subscription_items/si_1/usage_records",
        "/v1/subscription_items/si_1/usage_record_summaries",
    ):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await client.raw_request_async("post", path, quantity=1)
        assert exc.value.http_status == 404
        assert "Unrecognized request URL" in exc.value.user_message


# -- idempotency --------------------------------------------------------------------------------


async def test_idempotency_key_reused_elsewhere_is_idempotency_error(client):
    """Same key, different params (or endpoint) -> 400 idempotency_error -> IdempotencyError."""
    await client.v1.customers.create_async(
        params={"email": "a@x.io"}, options={"idempotency_key": "k"}
    )
    for call in (
        client.v1.customers.create_async(
            params={"email": "b@x.io"}, options={"idempotency_key": "k"}
        ),
        client.v1.products.create_async(params={"name": "p"}, options={"idempotency_key": "k"}),
    ):
        with pytest.raises(stripe.IdempotencyError) as exc:
            await call
        assert exc.value.http_status == 400
        assert exc.value.json_body["error"]["type"] == "idempotency_error"
        assert exc.value.headers["Stripe-Should-Retry"] == "false"
        assert exc.value.request_id.startswith("req_")


# -- meters -----------------------------------------------------------------------------------


async def test_meter_only_display_name_updatable(client):
    meter = await make_meter(client)
    for params in (
        {"event_name": "other"},
        {"default_aggregation": {"formula": "count"}},
        {"customer_mapping": {"event_payload_key": "x", "type": "by_id"}},
        {"value_settings": {"event_payload_key": "v"}},
        {"event_time_window": "day"},
    ):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await client.v1.billing.meters.update_async(meter.id, params=params)
        assert exc.value.code == "parameter_unknown"
    got = await client.v1.billing.meters.retrieve_async(meter.id)
    assert got.to_dict() == meter.to_dict()
    assert got.event_time_window is None and got.object == "billing.meter"


async def test_inactive_meter_refuses_events_and_adjustments(client):
    meter = await make_meter(client)
    cus = await make_customer(client)
    ev = await push(client, cus.id, identifier="before")
    await client.v1.billing.meters.deactivate_async(meter.id)
    with pytest.raises(stripe.InvalidRequestError, match="No active meter found for event name"):
        await push(client, cus.id)
    with pytest.raises(stripe.InvalidRequestError, match="No active meter found"):
        await client.v1.billing.meter_event_adjustments.create_async(
            params={
                "event_name": "api_calls",
                "type": "cancel",
                "cancel": {"identifier": ev.identifier},
            }
        )


async def test_meter_event_timestamp_boundaries(client, admin):
    """Exactly 35 days back and exactly 5 minutes ahead are accepted; one second more is not."""
    await make_meter(client)
    cus = await make_customer(client)
    now = await admin.freeze_clock()
    ok_past = await push(client, cus.id, timestamp=now - 35 * DAY)
    assert ok_past.timestamp == now - 35 * DAY
    with pytest.raises(stripe.InvalidRequestError) as past:
        await push(client, cus.id, timestamp=now - 35 * DAY - 1)
    assert past.value.param == "timestamp" and past.value.code == "timestamp_too_far_in_past"
    assert past.value.user_message.startswith(
        "The event timestamp cannot be more than 35 days in past"
    )
    assert (await push(client, cus.id, timestamp=now + 300)).timestamp == now + 300
    with pytest.raises(stripe.InvalidRequestError) as future:
        await push(client, cus.id, timestamp=now + 301)
    assert future.value.param == "timestamp"
    default = await push(client, cus.id)
    assert default.timestamp == now and default.created == now
    assert len(await admin.meter_events()) == 3


async def test_meter_event_identifier_and_value_rules(client, admin):
    meter = await make_meter(client)
    cus = await make_customer(client)
    assert (await push(client, cus.id, identifier="i" * 100)).identifier == "i" * 100
    with pytest.raises(stripe.InvalidRequestError) as long_id:
        await push(client, cus.id, identifier="j" * 101)
    assert long_id.value.http_status == 400 and long_id.value.param == "identifier"
    for bad in ("abc", "1e3", "1,5", "", "NaN", "--1"):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await push(client, cus.id, bad)
        assert exc.value.http_status == 400 and exc.value.param == "payload[value]", bad
    for payload, param in (
        ({"stripe_customer_id": cus.id}, "payload[value]"),  # value required for sum
        ({"value": "1"}, "payload[stripe_customer_id]"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await client.v1.billing.meter_events.create_async(
                params={"event_name": "api_calls", "payload": payload}
            )
        assert exc.value.param == param
    ev = await push(client, cus.id, "-2.5")  # negative values are allowed for sum
    assert ev.payload.value == "-2.5"
    now = await admin.now()
    page = await _summaries(
        client, meter.id, customer=cus.id, start_time=now - now % 60, end_time=now - now % 60 + 60
    )
    assert page.data[0].aggregated_value == pytest.approx(1.0 - 2.5)
    assert len(await admin.meter_events()) == 2


# -- summaries --------------------------------------------------------------------------------


async def test_summary_bounds_shape_and_alignment(client, admin):
    """start inclusive, end exclusive, minute/hour alignment, limit 1..100 default 10."""
    meter = await make_meter(client)
    cus = await make_customer(client)
    now = await admin.freeze_clock()
    hour = now - now % 3600
    start, end = hour - 12 * 3600, hour
    await push(client, cus.id, "1", timestamp=start)  # inclusive
    await push(client, cus.id, "100", timestamp=end)  # exclusive (if not in the future)
    whole = await _summaries(client, meter.id, customer=cus.id, start_time=start, end_time=end)
    s = whole.data[0]
    assert len(whole.data) == 1 and not whole.has_more
    assert (s.start_time, s.end_time, s.aggregated_value) == (start, end, 1.0)
    assert s.id.startswith("mtrusg_") and s.object == "billing.meter_event_summary"
    assert s.meter == meter.id and s.livemode is False
    hourly = await _summaries(
        client,
        meter.id,
        customer=cus.id,
        start_time=start,
        end_time=end,
        value_grouping_window="hour",
    )
    assert len(hourly.data) == 10 and hourly.has_more  # default limit 10 of 12 windows
    assert all(w.end_time - w.start_time == 3600 and w.start_time % 3600 == 0 for w in hourly.data)
    for bad in (
        {"start_time": start, "end_time": end + 30},  # end off a minute
        {"start_time": start + 30, "end_time": end},  # start off a minute
        {"start_time": start + 60, "end_time": end, "value_grouping_window": "hour"},
        {"start_time": start, "end_time": end - 60, "value_grouping_window": "hour"},
        {"start_time": start, "end_time": end, "value_grouping_window": "week"},
        {"start_time": start, "end_time": end, "limit": 0},
        {"start_time": start, "end_time": end, "limit": 101},
        {"start_time": start, "end_time": end, "starting_after": s.id, "ending_before": s.id},
        {"end_time": end},
        {"start_time": start},
    ):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await _summaries(client, meter.id, customer=cus.id, **bad)
        assert exc.value.http_status == 400, bad
    ok = await _summaries(
        client, meter.id, customer=cus.id, start_time=start, end_time=end, limit=100
    )
    assert len(ok.data) == 1


async def test_summary_async_auto_paging_both_directions(client, admin):
    meter = await make_meter(client)
    cus = await make_customer(client)
    now = await admin.freeze_clock()
    hour = now - now % 3600
    start = hour - 25 * 3600
    for i in range(25):
        await push(client, cus.id, str(i + 1), timestamp=start + i * 3600)
    base = {
        "customer": cus.id,
        "start_time": start,
        "end_time": hour,
        "value_grouping_window": "hour",
    }
    first = await _summaries(client, meter.id, **base, limit=4)
    forward = [s async for s in first.auto_paging_iter()]
    assert [s.aggregated_value for s in forward] == [float(v) for v in range(25, 0, -1)]
    # ending_before: the SDK walks backwards with previous_page (ending_before=<first id>)
    back = await _summaries(client, meter.id, **base, limit=4, ending_before=forward[-1].id)
    assert back.has_more
    seen = [s async for s in back.auto_paging_iter()]
    assert [s.aggregated_value for s in seen] == [float(v) for v in range(2, 26)]


# -- events -----------------------------------------------------------------------------------


async def test_events_list_limits_and_types(client, admin):
    for i in range(12):
        await make_customer(client, f"{i}@x.io")
    page = await client.v1.events.list_async()
    assert len(page.data) == 10 and page.has_more and page.url == "/v1/events"
    all_events = [e async for e in page.auto_paging_iter()]
    assert len(all_events) == 12 and all(e.id.startswith("evt_") for e in all_events)
    assert [e.created for e in all_events] == sorted((e.created for e in all_events), reverse=True)
    twenty = [f"customer.t{i}" for i in range(19)] + ["customer.created"]
    assert (
        len((await client.v1.events.list_async(params={"types": twenty, "limit": 100})).data) == 12
    )
    for bad in (
        {"types": [*twenty, "customer.updated"]},
        {"type": "customer.created", "types": ["customer.created"]},
        {"limit": 0},
        {"limit": 101},
        {"starting_after": all_events[0].id, "ending_before": all_events[1].id},
        {"delivery_success": "maybe"},
    ):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            await client.v1.events.list_async(params=bad)
        assert exc.value.http_status == 400, bad
    assert len((await client.v1.events.list_async(params={"limit": 100})).data) == 12


async def test_events_thirty_day_boundary(client, admin):
    await admin.freeze_clock()
    cus = await make_customer(client)
    ev = (await client.v1.events.list_async()).data[0]
    await admin.advance_clock(30 * DAY)
    assert (await client.v1.events.retrieve_async(ev.id)).id == ev.id  # exactly 30 days: kept
    await admin.advance_clock(1)
    assert (await client.v1.events.list_async()).data == []
    with pytest.raises(stripe.InvalidRequestError) as gone:
        await client.v1.events.retrieve_async(ev.id)
    assert gone.value.http_status == 404
    assert (await client.v1.customers.retrieve_async(cus.id)).id == cus.id  # objects stay


async def test_delivery_success_semantics(client, admin, receiver):
    """true: nothing pending (incl. no endpoint); false: some endpoint not yet served."""
    quiet = await make_customer(client, "quiet@x.io")  # no endpoint at all
    await client.v1.webhook_endpoints.create_async(
        params={"url": receiver.url, "enabled_events": ["customer.created"]}
    )
    receiver.statuses.extend([500] * 10)
    await admin.configure(webhook_retry_schedule_seconds=[])
    failing = await make_customer(client, "failing@x.io")
    await receiver.wait_for(1)
    await asyncio.sleep(0.1)
    ok = await client.v1.events.list_async(params={"delivery_success": True})
    bad = await client.v1.events.list_async(params={"delivery_success": False})
    assert [e.data.object.id for e in ok.data] == [quiet.id]
    assert [e.data.object.id for e in bad.data] == [failing.id] and bad.data[
        0
    ].pending_webhooks == 1


# -- webhooks ---------------------------------------------------------------------------------


async def test_signature_header_format_and_verification(client, admin, receiver):
    await admin.configure(webhook_secret=SECRET, webhook_signature_clock="real")
    await admin.advance_clock(3 * DAY)  # signature time is wall time with "real"
    await client.v1.webhook_endpoints.create_async(
        params={"url": receiver.url, "enabled_events": ["*"]}
    )
    await make_customer(client)
    await receiver.wait_for(1)
    headers, body = receiver.received[0]
    header = headers["stripe-signature"]
    m = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header)
    assert m, header
    expected = hmac.new(SECRET.encode(), f"{m[1]}.".encode() + body, hashlib.sha256).hexdigest()
    assert m[2] == expected  # keyed by the whole secret, whsec_ included
    ev = stripe.Webhook.construct_event(body.decode(), header, SECRET, tolerance=300)
    assert ev.type == "customer.created"
    assert client.construct_event(body, header, SECRET).id == ev.id
    assert json.loads(body)["id"] == ev.id
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode() + " ", header, SECRET)


async def test_events_while_endpoint_disabled_never_resent(client, receiver):
    we = await client.v1.webhook_endpoints.create_async(
        params={"url": receiver.url, "enabled_events": ["customer.created"]}
    )
    await client.v1.webhook_endpoints.update_async(we.id, params={"disabled": True})
    missed = await make_customer(client, "missed@x.io")
    await client.v1.webhook_endpoints.update_async(we.id, params={"disabled": False})
    seen = await make_customer(client, "seen@x.io")
    await receiver.wait_for(1)
    await asyncio.sleep(0.3)
    got = [json.loads(b)["data"]["object"]["id"] for _, b in receiver.received]
    assert got == [seen.id]
    # catch-up is by listing: the missed event is there (no endpoint was owed it)
    listed = await client.v1.events.list_async(params={"type": "customer.created"})
    assert missed.id in [e.data.object.id for e in listed.data]


# -- objects since 2025-03-31.basil ---------------------------------------------------------------


async def test_basil_object_shapes(client, admin):
    cus = await make_customer(client)
    product = await client.v1.products.create_async(params={"name": "Plan"})
    price = await client.v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount": 500,
            "product": product.id,
            "recurring": {"interval": "month"},
        }
    )
    sub = await client.v1.subscriptions.create_async(
        params={"customer": cus.id, "items": [{"price": price.id}]}
    )
    assert "current_period_end" not in sub and "current_period_start" not in sub
    item = sub["items"].data[0]
    assert item.current_period_start < item.current_period_end
    assert sub.status in {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "canceled",
        "unpaid",
        "paused",
    }
    for k in ("cancel_at_period_end", "cancel_at", "canceled_at", "ended_at"):
        assert k in sub
    inv = await client.v1.invoices.retrieve_async(sub.latest_invoice)
    assert inv.parent.subscription_details.subscription == sub.id
    assert not {"paid", "payment_intent", "charge"} & set(inv.to_dict())
    sess = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "customer": cus.id,
            "client_reference_id": "ref-1",
            "metadata": {"k": "v"},
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "https://x",
        }
    )
    assert sess.id.startswith("cs_") and (sess.mode, sess.status) == ("subscription", "open")
    assert sess.payment_status == "unpaid" and sess.client_reference_id == "ref-1"
    done = await admin.complete_checkout_session(sess.id)
    assert (done["status"], done["payment_status"]) == ("complete", "paid")
    assert done["subscription"].startswith("sub_") and done["invoice"].startswith("in_")
    assert done["customer"] == cus.id and done["metadata"] == {"k": "v"}
