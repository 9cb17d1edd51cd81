"""The rolling read-back's pace (readback/activities.py slice_size): slices keep a cycle on pace,
catch up after a skipped tick, and never read more than the lane allows."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from readback.activities import SLICE_BUDGET_FILL, lane_rate, slice_size


def test_a_day_of_ten_minute_slices_covers_every_customer_evenly():
    customers, cycle, every, done = 100_000, 86_400.0, 600.0, 0
    sizes = []
    for tick in range(144):
        n, on_pace = slice_size(customers=customers, done=done, elapsed=tick * every, cycle=cycle, every=every,
                                meters=3, lane_rate=6)
        assert on_pace
        sizes.append(n)
        done += n
    assert done == customers  # the whole cycle, within it
    assert max(sizes) - min(sizes) <= 1  # evenly: 694 or 695 customers a slice


def test_a_skipped_tick_is_caught_up_by_the_next():
    n, on_pace = slice_size(customers=1000, done=100, elapsed=1200, cycle=6000, every=600, meters=2, lane_rate=6)
    assert (n, on_pace) == (200, True)  # target 300 by the end of this slice


def test_the_lane_caps_a_slice_and_says_it_is_behind():
    # 100k customers x 3 meters in 24 h needs 3.5 reads/s: a 1/s lane cannot.
    n, on_pace = slice_size(customers=100_000, done=0, elapsed=0, cycle=86_400, every=600, meters=3, lane_rate=1)
    assert n == math.floor(1 * 600 * SLICE_BUDGET_FILL / 3) and not on_pace


def test_nothing_is_due_ahead_of_pace():
    assert slice_size(customers=10, done=5, elapsed=0, cycle=86_400, every=600, meters=1, lane_rate=6) == (0, True)


def test_lane_rate_matches_the_budget_sql():
    assert lane_rate(25, 0.25) == 6 and lane_rate(25, 0.01) == 1 and lane_rate(100, 1.0) == 100


@given(customers=st.integers(0, 10**6), done=st.integers(0, 10**6), elapsed=st.floats(0, 10**6),
       meters=st.integers(1, 10), rate=st.integers(1, 100))
def test_a_slice_never_overshoots_the_customers_nor_the_lane(customers, done, elapsed, meters, rate):
    done = min(done, customers)
    n, _ = slice_size(customers=customers, done=done, elapsed=elapsed, cycle=86_400, every=600, meters=meters,
                      lane_rate=rate)
    assert 0 <= n <= customers - done
    assert n * meters <= max(meters, rate * 600 * SLICE_BUDGET_FILL)
