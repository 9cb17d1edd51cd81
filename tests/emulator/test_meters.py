"""Billing meters, meter events, adjustments and summaries through the official SDK."""

from __future__ import annotations

import pytest
import stripe

from .helpers import day_total, make_customer, make_meter, push

DAY = 86400


async def test_meter_defaults_and_lifecycle(client, admin):
    meter = await make_meter(client)
    assert meter.id.startswith("mtr_")
    assert meter.customer_mapping.to_dict() == {
        "event_payload_key": "stripe_customer_id",
        "type": "by_id",
    }
    assert meter.value_settings.to_dict() == {"event_payload_key": "value"}
    assert meter.status == "active" and meter.status_transitions.deactivated_at is None

    with pytest.raises(stripe.InvalidRequestError) as dup:
        await make_meter(client)
    assert dup.value.param == "event_name"

    updated = await client.v1.billing.meters.update_async(
        meter.id, params={"display_name": "Renamed"}
    )
    assert updated.display_name == "Renamed"
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.billing.meters.update_async(meter.id, params={"event_name": "other"})

    cus = await make_customer(client)
    off = await client.v1.billing.meters.deactivate_async(meter.id)
    assert off.status == "inactive" and off.status_transitions.deactivated_at == await admin.now()
    with pytest.raises(
        stripe.InvalidRequestError, match="No active meter found for event name api_calls"
    ):
        await push(client, cus.id)
    inactive = await client.v1.billing.meters.list_async(params={"status": "inactive"})
    assert [m.id for m in inactive.data] == [meter.id]
    assert (await client.v1.billing.meters.list_async(params={"status": "active"})).data == []
    on = await client.v1.billing.meters.reactivate_async(meter.id)
    assert on.status == "active"
    await push(client, cus.id)
    got = await client.v1.billing.meters.retrieve_async(meter.id)
    assert got.display_name == "Renamed"


async def test_meter_event_response_and_validation(client, admin):
    await make_meter(client)
    cus = await make_customer(client)
    ev = await push(client, cus.id, "2.5", identifier="evt-1")
    assert ev.object == "billing.meter_event"
    assert "id" not in ev
    assert ev.identifier == "evt-1" and ev.payload.to_dict() == {
        "stripe_customer_id": cus.id,
        "value": "2.5",
    }
    generated = await push(client, cus.id)
    assert generated.identifier and len(generated.identifier) <= 100

    with pytest.raises(stripe.InvalidRequestError) as bad_value:
        await push(client, cus.id, "lots")
    assert bad_value.value.param == "payload[value]"
    with pytest.raises(
        stripe.InvalidRequestError, match="No active meter found for event name nope"
    ):
        await push(client, cus.id, event_name="nope")
    with pytest.raises(stripe.InvalidRequestError):
        await push(client, cus.id, identifier="x" * 101)
    now = await admin.now()
    with pytest.raises(stripe.InvalidRequestError) as old:
        await push(client, cus.id, timestamp=now - 36 * DAY)
    assert str(old.value.user_message).startswith(
        "The event timestamp cannot be more than 35 days in past"
    )
    assert old.value.param == "timestamp"
    await push(client, cus.id, timestamp=now - 34 * DAY)
    with pytest.raises(stripe.InvalidRequestError):
        await push(client, cus.id, timestamp=now + 6 * 60)
    await push(client, cus.id, timestamp=now + 4 * 60)
    assert len(await admin.meter_events(event_name="api_calls")) == 4


async def test_duplicate_identifier_refused_then_accepted_after_window(client, admin):
    await make_meter(client)
    cus = await make_customer(client)
    await push(client, cus.id, "1", identifier="dup-1")
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await push(client, cus.id, "1", identifier="dup-1")
    err = exc.value
    assert err.http_status == 400
    assert err.user_message == "An event already exists with identifier dup-1."
    assert err.headers["Stripe-Should-Retry"] == "false"
    assert err.error.type == "invalid_request_error"
    assert err.request_id and err.request_id.startswith("req_")

    await admin.advance_clock(DAY - 60)
    with pytest.raises(stripe.InvalidRequestError):
        await push(client, cus.id, "1", identifier="dup-1")
    await admin.advance_clock(120)
    again = await push(client, cus.id, "1", identifier="dup-1")
    assert again.identifier == "dup-1"
    events = await admin.meter_events(customer=cus.id)
    assert [e["identifier"] for e in events] == ["dup-1", "dup-1"]
    assert all(not e["cancelled"] for e in events)


async def test_dedupe_window_configurable(client, admin):
    await admin.configure(identifier_dedupe_seconds=10)
    await make_meter(client)
    cus = await make_customer(client)
    await push(client, cus.id, identifier="w")
    await admin.advance_clock(9)
    with pytest.raises(stripe.InvalidRequestError, match="already exists with identifier w"):
        await push(client, cus.id, identifier="w")
    await admin.advance_clock(2)
    again = await push(client, cus.id, identifier="w")
    assert again.identifier == "w"
    assert [e["identifier"] for e in await admin.meter_events(customer=cus.id)] == ["w", "w"]


async def test_cancel_within_24h_drops_summary_and_after_24h_refused(client, admin):
    meter = await make_meter(client)
    cus = await make_customer(client)
    now = await admin.now()
    await push(client, cus.id, "5", identifier="keep", timestamp=now - 120)
    await push(client, cus.id, "7", identifier="drop", timestamp=now - 120)
    assert await day_total(client, meter.id, cus.id, now - 120) == 12.0

    adj = await client.v1.billing.meter_event_adjustments.create_async(
        params={"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "drop"}}
    )
    assert adj.object == "billing.meter_event_adjustment"
    assert (
        adj.cancel.identifier == "drop"
        and adj.type == "cancel"
        and adj.status in ("pending", "complete")
    )
    assert await day_total(client, meter.id, cus.id, now - 120) == 5.0
    assert [e["cancelled"] for e in await admin.meter_events(customer=cus.id)] == [False, True]

    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.billing.meter_event_adjustments.create_async(
            params={
                "event_name": "api_calls",
                "type": "cancel",
                "cancel": {"identifier": "unknown"},
            }
        )
    await admin.advance_clock(DAY + 1)
    with pytest.raises(stripe.InvalidRequestError, match="24 hours"):
        await client.v1.billing.meter_event_adjustments.create_async(
            params={"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "keep"}}
        )
    assert await day_total(client, meter.id, cus.id, now - 120) == 5.0


async def test_summary_alignment_rules(client, admin):
    meter = await make_meter(client)
    cus = await make_customer(client)
    now = await admin.now()
    day = now - now % DAY
    base = {"customer": cus.id}
    with pytest.raises(stripe.InvalidRequestError) as minute:
        await client.v1.billing.meters.event_summaries.list_async(
            meter.id, params={**base, "start_time": day + 30, "end_time": day + 3600}
        )
    assert minute.value.param == "start_time"
    with pytest.raises(stripe.InvalidRequestError) as daywin:
        await client.v1.billing.meters.event_summaries.list_async(
            meter.id,
            params={
                **base,
                "start_time": day + 3600,
                "end_time": day + DAY,
                "value_grouping_window": "day",
            },
        )
    assert daywin.value.param == "start_time"
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.billing.meters.event_summaries.list_async(
            meter.id,
            params={
                **base,
                "start_time": day + 60,
                "end_time": day + 3600,
                "value_grouping_window": "hour",
            },
        )
    with pytest.raises(stripe.InvalidRequestError) as no_customer:
        await client.v1.billing.meters.event_summaries.list_async(
            meter.id, params={"start_time": day, "end_time": day + 60}
        )
    assert no_customer.value.param == "customer"
    ok = await client.v1.billing.meters.event_summaries.list_async(
        meter.id, params={**base, "start_time": day + 60, "end_time": day + 180}
    )
    assert (
        len(ok.data) == 1 and ok.data[0].start_time == day + 60 and ok.data[0].end_time == day + 180
    )
    assert ok.data[0].aggregated_value == 0.0


async def test_summary_formulas_and_windows(client, admin):
    cus = await make_customer(client)
    now = await admin.now()
    hour = now - now % 3600
    ts1, ts2 = hour - 3600 + 10, hour - 3600 + 20  # previous hour
    meters = {f: await make_meter(client, f"ev_{f}", f) for f in ("sum", "count", "last")}
    for f in meters:
        await push(client, cus.id, "4", event_name=f"ev_{f}", timestamp=ts2)
        await push(client, cus.id, "3", event_name=f"ev_{f}", timestamp=ts1)
        await push(client, cus.id, "10", event_name=f"ev_{f}", timestamp=hour - 7200 + 5)
    expected = {"sum": 7.0, "count": 2.0, "last": 4.0}
    for f, meter in meters.items():
        page = await client.v1.billing.meters.event_summaries.list_async(
            meter.id,
            params={
                "customer": cus.id,
                "start_time": hour - 3 * 3600,
                "end_time": hour,
                "value_grouping_window": "hour",
            },
        )
        values = [(s.start_time, s.aggregated_value) for s in page.data]
        # newest window first; empty windows are listed with 0.0
        assert values == [
            (hour - 3600, expected[f]),
            (hour - 7200, 10.0 if f != "count" else 1.0),
            (hour - 3 * 3600, 0.0),
        ]
        assert all(isinstance(s.aggregated_value, float) for s in page.data)


async def test_summary_lag(client, admin):
    await admin.configure(summary_lag_seconds=300)
    meter = await make_meter(client)
    cus = await make_customer(client)
    now = await admin.now()
    await push(client, cus.id, "9", timestamp=now - 60)
    assert await day_total(client, meter.id, cus.id, now - 60) == 0.0
    await admin.advance_clock(301)
    assert await day_total(client, meter.id, cus.id, now - 60) == 9.0


async def test_unknown_customer_accepted_not_counted(client, admin):
    meter = await make_meter(client)
    cus = await make_customer(client)
    ev = await push(client, "cus_doesnotexist", "5")
    assert ev.identifier
    assert len(await admin.meter_events(customer="cus_doesnotexist")) == 1
    assert await day_total(client, meter.id, cus.id, await admin.now()) == 0.0


async def test_summary_pagination_auto_paging(client, admin):
    meter = await make_meter(client)
    cus = await make_customer(client)
    now = await admin.now()
    hour = now - now % 3600
    start = hour - 30 * 3600
    for i in range(0, 30, 3):
        await push(client, cus.id, str(i), timestamp=start + i * 3600 + 1)
    page = await client.v1.billing.meters.event_summaries.list_async(
        meter.id,
        params={
            "customer": cus.id,
            "start_time": start,
            "end_time": hour,
            "value_grouping_window": "hour",
            "limit": 7,
        },
    )
    assert len(page.data) == 7 and page.has_more
    seen = [s async for s in page.auto_paging_iter()]
    assert len(seen) == 30
    assert len({s.id for s in seen}) == 30
    assert [s.start_time for s in seen] == sorted((s.start_time for s in seen), reverse=True)
    assert sum(s.aggregated_value for s in seen) == float(sum(range(0, 30, 3)))
    again = await client.v1.billing.meters.event_summaries.list_async(
        meter.id,
        params={
            "customer": cus.id,
            "start_time": start,
            "end_time": hour,
            "value_grouping_window": "hour",
            "limit": 7,
        },
    )
    assert [s.id for s in again.data] == [s.id for s in page.data]  # ids are stable


async def test_admin_meter_events_filters(client, admin):
    await make_meter(client, "a")
    await make_meter(client, "b")
    c1, c2 = await make_customer(client, "1@x.io"), await make_customer(client, "2@x.io")
    await push(client, c1.id, event_name="a", identifier="1")
    await push(client, c2.id, event_name="a", identifier="2")
    await push(client, c1.id, event_name="b", identifier="3")
    assert [e["identifier"] for e in await admin.meter_events()] == ["1", "2", "3"]
    assert [e["identifier"] for e in await admin.meter_events(event_name="a")] == ["1", "2"]
    assert [e["identifier"] for e in await admin.meter_events(customer=c1.id)] == ["1", "3"]
    only = await admin.meter_events(event_name="b", customer=c1.id)
    assert only[0]["payload"] == {"stripe_customer_id": c1.id, "value": "1"}
    assert set(only[0]) == {
        "identifier",
        "event_name",
        "payload",
        "timestamp",
        "created",
        "cancelled",
    }
