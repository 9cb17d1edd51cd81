"""Smoke test of bench/tick at a tiny size (2,000 customers, 20k events): the tick (through the
worker and Temporal) and the raw script do the same work from the same starting state, both
under the live-like limits, and the tick's Stripe calls stay within 1.2 x the keys it had to
touch. No timing is asserted (benchmarks live under bench/)."""

from __future__ import annotations

import pytest

from bench.tick.__main__ import main, parse_args

pytestmark = pytest.mark.integration


async def test_tick_bench_runs_tick_and_raw_on_the_same_work() -> None:
    lines = await main(parse_args(["--sizes", "20k", "--customers", "2000", "--arms", "tick,raw"]))

    tick, raw = (next(x for x in lines if x["arm"] == arm) for arm in ("tick", "raw"))
    for arm in (tick, raw):
        assert arm["check"] == {"unsynced_b_keys": 0, "b_keys_outbox_not_ledger": 0}
        assert arm["stripe_429"] == 0 and arm["stripe_errors_by_status"] == {}
        # 20 changed customers x 3 meters pushed; the previous tick's 60 keys read back.
        assert arm["counts"]["changed_keys"] == 60 and arm["counts"]["settled_keys"] == 60
        assert arm["calls_per_key"] <= 1.2
        assert arm["postgres_statements"] > 0
    assert tick["counts"]["pushed"] == raw["counts"]["pushed"] == 60
    assert tick["counts"]["confirmed"] == raw["counts"]["confirmed"] == 60
    assert tick["stripe_calls_by_route"] == raw["stripe_calls_by_route"]
    assert tick["worker_peak_rss_mib"] > 0
