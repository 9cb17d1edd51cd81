"""Scale smoke tests. The store is used in-process (no HTTP) to keep the suite fast; timings are
measured by ``python -m bench.emulator``, not asserted here."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from stripe_emulator.config import DAY, Config
from stripe_emulator.resources.meter_event_summaries import list_meter_event_summaries
from stripe_emulator.resources.meter_events import seed_meter_events
from stripe_emulator.resources.meters import create_meter
from stripe_emulator.state import RequestContext, Store

from .helpers import make_meter

N_EVENTS = 20_000
N_CUSTOMERS = 50
N_DAYS = 30


class CountingList(list):
    """A list that counts item reads (``records[i]``)."""

    reads = 0

    def __getitem__(self, index: Any) -> Any:
        CountingList.reads += 1
        return super().__getitem__(index)


def test_day_summaries_read_only_their_own_events():
    s = Store(Config(rate_limit=0))
    ctx = RequestContext()
    meter = create_meter(
        s, ctx, {"display_name": "x", "event_name": "api", "default_aggregation": {"formula": "sum"}}
    )
    now = s.now()
    day0 = now - now % DAY
    customers = [f"cus_{i:05d}" for i in range(N_CUSTOMERS)]
    events = [
        {
            "event_name": "api",
            "payload": {"stripe_customer_id": customers[i % N_CUSTOMERS], "value": str(i % 7)},
            "timestamp": day0 - ((i * 7919) % (N_DAYS * DAY)) - 1,
        }
        for i in range(N_EVENTS)
    ]
    assert seed_meter_events(s, events) == N_EVENTS
    expected: dict[tuple[str, int], float] = defaultdict(float)
    for e in events:
        day = e["timestamp"] - e["timestamp"] % DAY
        expected[(e["payload"]["stripe_customer_id"], day)] += int(e["payload"]["value"])

    for series in s.meter_events.series.values():
        series.sorted()
        series.records = CountingList(series.records)
    CountingList.reads = 0
    for customer in customers:
        for d in range(1, N_DAYS + 1):
            start = day0 - d * DAY
            page = list_meter_event_summaries(
                s,
                ctx,
                {
                    "customer": customer,
                    "start_time": start,
                    "end_time": start + DAY,
                    "value_grouping_window": "day",
                },
                meter["id"],
            )
            assert page["data"][0]["aggregated_value"] == expected[(customer, start)]
    # The day windows are disjoint and cover every event: binary search over the timestamps
    # means each event is read exactly once, not once per summary (a scan would read 30x more).
    assert CountingList.reads == N_EVENTS
    assert len(s.meter_events.select("api", customers[3])) == N_EVENTS // N_CUSTOMERS


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
