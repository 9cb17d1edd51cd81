"""`python -m bench.emulator [--events 200000] [--customers 500] [--summaries 20000]`: the Stripe
emulator's meter-event store in-process (no HTTP): time to bulk-seed the events (spread over the
last 30 days) and to answer day summaries for random (customer, day) pairs. One JSON line on
stdout. These timings were the wall-clock assertion of tests/emulator/test_perf.py (both under
10 s at the defaults); the test now checks results and the number of events read instead."""

from __future__ import annotations

import argparse
import json
import time

from stripe_emulator.config import DAY, Config
from stripe_emulator.resources.meter_event_summaries import list_meter_event_summaries
from stripe_emulator.resources.meter_events import seed_meter_events
from stripe_emulator.resources.meters import create_meter
from stripe_emulator.state import RequestContext, Store


def run(n_events: int, n_customers: int, n_summaries: int) -> dict[str, float | int]:
    s = Store(Config(rate_limit=0))
    ctx = RequestContext()
    params = {"display_name": "x", "event_name": "api", "default_aggregation": {"formula": "sum"}}
    meter = create_meter(s, ctx, params)
    now = s.now()
    day0 = now - now % DAY
    customers = [f"cus_{i:05d}" for i in range(n_customers)]
    events = [
        {
            "event_name": "api",
            "payload": {"stripe_customer_id": customers[i % n_customers], "value": "2"},
            "timestamp": day0 - ((i * 7919) % (30 * DAY)) - 1,
        }
        for i in range(n_events)
    ]
    t0 = time.perf_counter()
    seed_meter_events(s, events)
    seeded = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = 0.0
    for i in range(n_summaries):
        d = day0 - (i % 30 + 1) * DAY
        query = {
            "customer": customers[i % n_customers],
            "start_time": d,
            "end_time": d + DAY,
            "value_grouping_window": "day",
        }
        page = list_meter_event_summaries(s, ctx, query, meter["id"])
        total += page["data"][0]["aggregated_value"]
    summarized = time.perf_counter() - t0
    return {
        "events": n_events,
        "customers": n_customers,
        "summaries": n_summaries,
        "seed_seconds": round(seeded, 3),
        "summaries_seconds": round(summarized, 3),
        "summaries_per_second": round(n_summaries / summarized) if summarized else 0,
        "total_value": total,
    }


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.emulator", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--customers", type=int, default=500)
    p.add_argument("--summaries", type=int, default=20_000)
    a = p.parse_args()
    print(json.dumps(run(a.events, a.customers, a.summaries)))


if __name__ == "__main__":
    cli()
