"""Wire protocol: auth, errors, idempotency, rate limits, faults, pagination."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import stripe

from .helpers import make_client, make_customer, make_meter, push


async def test_auth_required(emulator_url):
    bad = stripe.StripeClient("not_a_key", base_addresses={"api": emulator_url})
    with pytest.raises(stripe.AuthenticationError):
        await bad.v1.customers.list_async()
    async with httpx.AsyncClient() as h:
        resp = await h.get(f"{emulator_url}/v1/customers")
    assert resp.status_code == 401
    assert resp.headers["request-id"].startswith("req_")
    assert set(resp.json()["error"]) == {
        "type",
        "code",
        "message",
        "param",
        "doc_url",
        "request_log_url",
    }


async def test_not_found_and_request_id(client):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.customers.retrieve_async("cus_missing")
    assert exc.value.http_status == 404
    assert exc.value.code == "resource_missing"
    assert exc.value.request_id.startswith("req_")
    cus = await make_customer(client)
    assert cus.last_response.request_id.startswith("req_")


async def test_idempotent_replay_and_mismatch(client, admin):
    first = await client.v1.customers.create_async(
        params={"email": "same@x.io"}, options={"idempotency_key": "key-1"}
    )
    replay = await client.v1.customers.create_async(
        params={"email": "same@x.io"}, options={"idempotency_key": "key-1"}
    )
    assert replay.id == first.id
    assert replay.last_response.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert len((await client.v1.customers.list_async()).data) == 1
    with pytest.raises(stripe.IdempotencyError) as exc:
        await client.v1.customers.create_async(
            params={"email": "other@x.io"}, options={"idempotency_key": "key-1"}
        )
    assert exc.value.http_status == 400
    # keys are scoped per API key
    other = stripe.StripeClient("sk_test_other", base_addresses={"api": admin.base_url})
    third = await other.v1.customers.create_async(
        params={"email": "same@x.io"}, options={"idempotency_key": "key-1"}
    )
    assert third.id != first.id


async def test_idempotency_saves_errors_but_not_validation_failures(client, admin):
    await make_meter(client)
    cus = await make_customer(client)
    await push(client, cus.id, identifier="i-1")
    params = {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": cus.id, "value": "1"},
        "identifier": "i-1",
    }
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.billing.meter_events.create_async(
            params=params, options={"idempotency_key": "dup"}
        )
    with pytest.raises(stripe.InvalidRequestError) as replayed:
        await client.v1.billing.meter_events.create_async(
            params=params, options={"idempotency_key": "dup"}
        )
    assert replayed.value.headers["Idempotent-Replayed"] == "true"
    # a validation failure is not saved: fixing nothing but retrying is evaluated afresh
    bad = {"event_name": "api_calls", "payload": {"stripe_customer_id": cus.id, "value": "x"}}
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as v:
            await client.v1.billing.meter_events.create_async(
                params=bad, options={"idempotency_key": "val"}
            )
        assert "Idempotent-Replayed" not in v.value.headers
    # the idempotency record lasts 24h on the emulator clock (so does the identifier dedupe)
    await admin.advance_clock(86400 + 1)
    fresh = await client.v1.billing.meter_events.create_async(
        params=params, options={"idempotency_key": "dup"}
    )
    assert "Idempotent-Replayed" not in fresh.last_response.headers


async def test_idempotency_key_in_flight_conflict(client, admin):
    await admin.configure(
        faults=[
            {"method": "POST", "path_prefix": "/v1/customers", "status": None, "latency_ms": 300}
        ]
    )
    opts = {"idempotency_key": "slow"}
    first = asyncio.create_task(
        client.v1.customers.create_async(params={"email": "s@x.io"}, options=opts)
    )
    await asyncio.sleep(0.1)
    with pytest.raises(stripe.APIError) as exc:
        await client.v1.customers.create_async(params={"email": "s@x.io"}, options=opts)
    assert exc.value.http_status == 409
    assert exc.value.json_body["error"]["code"] == "idempotency_key_in_use"
    assert (await first).email == "s@x.io"


async def test_rate_limit_429(client, admin):
    await admin.configure(rate_limit=3)
    results = await asyncio.gather(
        *(client.v1.customers.list_async() for _ in range(12)), return_exceptions=True
    )
    limited = [r for r in results if isinstance(r, Exception)]
    assert limited and all(isinstance(r, stripe.RateLimitError) for r in limited)
    err = limited[0]
    assert err.http_status == 429
    assert err.json_body["error"]["code"] == "rate_limit"
    assert err.headers["Stripe-Rate-Limited-Reason"] == "global-rate"
    assert "Stripe-Should-Retry" not in err.headers
    # admin routes are never limited
    for _ in range(10):
        await admin.now()
    stats = await admin.request_stats()
    assert stats["GET /v1/customers"] == len(results) - len(limited)
    await asyncio.sleep(1.1)
    await client.v1.customers.list_async()


async def test_rate_limited_requests_not_saved_for_idempotency(client, admin):
    await admin.configure(rate_limit=1)
    await client.v1.customers.list_async()
    with pytest.raises(stripe.RateLimitError):
        await client.v1.customers.create_async(
            params={"email": "r@x.io"}, options={"idempotency_key": "rl"}
        )
    await admin.configure(rate_limit=0)
    created = await client.v1.customers.create_async(
        params={"email": "r@x.io"}, options={"idempotency_key": "rl"}
    )
    assert "Idempotent-Replayed" not in created.last_response.headers


async def _fault_pattern(client, admin) -> list[bool]:
    await make_meter(client)
    cus = await make_customer(client)
    out = []
    for i in range(30):
        try:
            await push(client, cus.id, identifier=f"f{i}")
            out.append(True)
        except stripe.APIError as e:
            assert e.http_status == 500
            assert e.headers["Stripe-Should-Retry"] == "true"
            out.append(False)
    events = await admin.meter_events()
    assert [e["identifier"] for e in events] == [f"f{i}" for i, ok in enumerate(out) if ok]
    return out


async def test_seeded_faults_reproducible(client, admin):
    faults = [
        {
            "method": "POST",
            "path_prefix": "/v1/billing/meter_events",
            "status": 500,
            "probability": 0.4,
        }
    ]
    await admin.configure(faults=faults, seed=7)
    a = await _fault_pattern(client, admin)
    await admin.reset(config={"faults": faults, "seed": 7})
    b = await _fault_pattern(client, admin)
    assert a == b
    assert 0 < a.count(False) < 30
    await admin.reset(config={"faults": faults, "seed": 8})
    c = await _fault_pattern(client, admin)
    assert c != a
    stats = await admin.request_stats()
    assert stats["POST /v1/billing/meter_events"] == c.count(True)


async def test_sdk_retries_injected_500_with_same_key(emulator_url, admin):
    await admin.configure(
        faults=[{"path_prefix": "/v1/billing/meter_events", "status": 500, "max_count": 2}]
    )
    retrying = make_client(emulator_url, retries=3)
    await make_meter(retrying)
    cus = await make_customer(retrying)
    ev = await push(retrying, cus.id, identifier="r1")
    assert ev.identifier == "r1"
    assert len(await admin.meter_events()) == 1
    cfg = await admin.get_config()
    assert cfg["faults"][0]["injected"] == 2


async def test_fault_after_handler_then_replay(emulator_url, admin):
    """``after`` faults commit the request, lose the response; the SDK retry replays it."""
    await admin.configure(
        faults=[
            {
                "path_prefix": "/v1/billing/meter_events",
                "status": 503,
                "max_count": 1,
                "after": True,
            }
        ]
    )
    retrying = make_client(emulator_url, retries=2)
    await make_meter(retrying)
    cus = await make_customer(retrying)
    ev = await push(retrying, cus.id, identifier="a1")
    assert ev.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(await admin.meter_events()) == 1


async def test_list_pagination_auto_paging(client):
    for i in range(105):
        await client.v1.customers.create_async(params={"email": f"p{i}@x.io"})
    page = await client.v1.customers.list_async(params={"limit": 100})
    assert len(page.data) == 100 and page.has_more and page.url == "/v1/customers"
    emails = [c.email async for c in page.auto_paging_iter()]
    assert len(emails) == 105 and emails[0] == "p104@x.io" and emails[-1] == "p0@x.io"
    second = await client.v1.customers.list_async(
        params={"limit": 3, "starting_after": page.data[1].id}
    )
    assert [c.email for c in second.data] == ["p102@x.io", "p101@x.io", "p100@x.io"]
    before = await client.v1.customers.list_async(
        params={"limit": 2, "ending_before": page.data[3].id}
    )
    assert [c.email for c in before.data] == ["p103@x.io", "p102@x.io"] and before.has_more
    filtered = await client.v1.customers.list_async(params={"email": "p7@x.io"})
    assert [c.email for c in filtered.data] == ["p7@x.io"]
    for bad in (
        {"limit": 0},
        {"limit": 101},
        {"starting_after": page.data[0].id, "ending_before": page.data[1].id},
    ):
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.customers.list_async(params=bad)


async def test_unknown_route(client, emulator_url):
    async with httpx.AsyncClient() as h:
        resp = await h.get(
            f"{emulator_url}/v1/nothing_here", headers={"Authorization": "Bearer sk_test_x"}
        )
    assert resp.status_code == 404
    assert "Unrecognized request URL" in resp.json()["error"]["message"]


async def test_endpoint_rate_limit_429_and_request_log(client, admin):
    """Stripe's per-endpoint bucket: one endpoint runs out while another still answers; the
    request log records every request, 429s included, with its route and key."""
    await admin.configure(rate_limit=100, endpoint_rate_limit=4)
    await admin.reset_request_log()
    results = await asyncio.gather(
        *(client.v1.customers.list_async() for _ in range(10)), return_exceptions=True
    )
    limited = [r for r in results if isinstance(r, Exception)]
    assert len(limited) >= 5 and all(isinstance(r, stripe.RateLimitError) for r in limited)
    assert limited[0].headers["Stripe-Rate-Limited-Reason"] == "endpoint-rate"
    assert limited[0].json_body["error"]["code"] == "rate_limit"
    await client.v1.billing.meters.list_async()  # another endpoint's bucket is full
    log = await admin.request_log()
    routes = [(route, status) for _, route, status, _ in log]
    assert routes.count(("GET /v1/customers", 429)) == len(limited)
    assert routes.count(("GET /v1/customers", 200)) == 10 - len(limited)
    assert routes[-1] == ("GET /v1/billing/meters", 200)
    only = await admin.request_log(route="GET /v1/billing/meters")
    assert len(only) == 1
    await admin.configure(endpoint_rate_limit=25, rate_limit=0)


async def test_live_meter_events_have_a_bucket_outside_the_account_limit(client, admin):
    """Live mode: meter events have their own 1000/s bucket and leave the account's 100/s (here
    2/s) to everything else; in test mode they count toward it (own_bucket_routes empty)."""
    route = "POST /v1/billing/meter_events"
    meter = await client.v1.billing.meters.create_async(params={
        "display_name": "own bucket", "event_name": "own_bucket_events", "default_aggregation": {"formula": "sum"}})
    customer = await client.v1.customers.create_async(params={"name": "own bucket"})
    await admin.configure(rate_limit=2, endpoint_rate_limit=25, endpoint_rate_limits={route: 1000},
                          own_bucket_routes=[route])
    try:
        pushes = await asyncio.gather(*(client.v1.billing.meter_events.create_async(params={
            "event_name": meter.event_name, "payload": {"stripe_customer_id": customer.id, "value": "1"}})
            for _ in range(20)), return_exceptions=True)
        assert not [p for p in pushes if isinstance(p, Exception)]  # 20 in a second: not the account's
        await admin.configure(own_bucket_routes=[])  # test mode: they count toward the account
        pushes = await asyncio.gather(*(client.v1.billing.meter_events.create_async(params={
            "event_name": meter.event_name, "payload": {"stripe_customer_id": customer.id, "value": "1"}})
            for _ in range(10)), return_exceptions=True)
        assert any(isinstance(p, stripe.RateLimitError) for p in pushes)
    finally:
        await admin.configure(rate_limit=0, endpoint_rate_limits={}, own_bucket_routes=[])
