"""Scale smoke tests: the store is used in-process (no HTTP) to keep the suite fast."""

from __future__ import annotations

import time

from stripe_emulator.config import Config
from stripe_emulator.resources.meter_event_summaries import list_meter_event_summaries
from stripe_emulator.resources.meter_events import seed_meter_events
from stripe_emulator.resources.meters import create_meter
from stripe_emulator.state import RequestContext, Store

from .helpers import make_meter


def test_summaries_fast_over_many_events():
    s = Store(Config(rate_limit=0))
    meter = create_meter(
        s,
        RequestContext(),
        {"display_name": "x", "event_name": "api", "default_aggregation": {"formula": "sum"}},
    )
    now = s.now()
    day0 = now - now % 86400
    customers = [f"cus_{i:05d}" for i in range(500)]
    events = [
        {
            "event_name": "api",
            "payload": {"stripe_customer_id": customers[i % 500], "value": "2"},
            "timestamp": day0 - ((i * 7919) % (30 * 86400)) - 1,
        }
        for i in range(200_000)
    ]
    t0 = time.perf_counter()
    assert seed_meter_events(s, events) == 200_000
    seeded = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = 0.0
    for i in range(20_000):
        d = day0 - (i % 30 + 1) * 86400
        page = list_meter_event_summaries(
            s,
            RequestContext(),
            {
                "customer": customers[i % 500],
                "start_time": d,
                "end_time": d + 86400,
                "value_grouping_window": "day",
            },
            meter["id"],
        )
        total += page["data"][0]["aggregated_value"]
    summarized = time.perf_counter() - t0
    assert total > 0
    assert seeded < 10 and summarized < 10, (seeded, summarized)
    assert len(s.meter_events.select("api", customers[3])) == 400


async def test_bulk_seed_admin(client, admin):
    meter = await make_meter(client)
    now = await admin.now()
    n = await admin.seed_meter_events(
        [
            {
                "event_name": "api_calls",
                "customer": "cus_seeded",
                "value": "2",
                "timestamp": now - 10,
            }
            for _ in range(50)
        ]
    )
    assert n == 50
    cust = await client.v1.customers.retrieve_async("cus_seeded")  # created by the seed
    start = (now - 10) - (now - 10) % 86400
    page = await client.v1.billing.meters.event_summaries.list_async(
        meter.id, params={"customer": cust.id, "start_time": start, "end_time": start + 86400}
    )
    assert page.data[0].aggregated_value == 100.0
