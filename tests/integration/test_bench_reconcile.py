"""Smoke test of bench/reconcile at a tiny size: both arms run from the same starting state and
fix every injected drift. No timing is asserted (benchmarks live under bench/)."""

from __future__ import annotations

import pytest

from bench.reconcile.__main__ import one_size, parse_args

pytestmark = pytest.mark.integration


async def test_benchmark_runs_both_arms_and_both_fix_every_drift() -> None:
    args = parse_args(["--sizes", "2000/20", "--drift", "0.05"])
    line = await one_size(args, 2000, 20)

    assert line["events"] == 2000 and line["customers"] == 20
    assert line["drifted_keys"] >= 2
    assert line["all_drift_fixed"] is True
    wf, bl = line["workflow"], line["baseline"]
    for arm in (wf, bl):
        assert arm["verified"]["unfixed_keys"] == 0
        assert arm["verified"]["counter_mismatches"] == 0
        assert arm["rate_limit_retries"] == 0
    # Same starting state, same rules: the same corrections and the same Stripe traffic.
    assert wf["counts"]["corrections_pushed"] == bl["counts"]["corrections_pushed"] == line["drifted_keys"]
    assert wf["counts"]["counter_repairs"] == bl["counts"]["counter_repairs"]
    assert wf["stripe_calls_by_endpoint"] == bl["stripe_calls_by_endpoint"]
    assert wf["history_events"] > 0 and wf["runs"] == 1 and wf["activity_retries"] == 0
    assert wf["peak_rss_mib"] > 0 and line["ratio"] > 0
