"""The circuit breaker's pure decision and its reason, and the process tally behind it."""

from __future__ import annotations

from billing.stripe_health import ErrorReason, StripeHealth
from circuit.policy import Figures, Threshold, describe, should_open

T = Threshold(min_errors=20, error_rate=0.5)


def test_opens_only_with_enough_errors_and_a_large_enough_share() -> None:
    assert should_open(Figures(requests=40, errors=20, window_seconds=60), T)
    assert not should_open(Figures(requests=40, errors=19, window_seconds=60), T)  # too few
    assert not should_open(Figures(requests=1000, errors=400, window_seconds=60), T)  # 40%: busy, mostly fine
    assert not should_open(Figures(requests=0, errors=0, window_seconds=60), T)


def test_errors_without_requests_of_their_own_count_as_a_full_rate() -> None:
    # 429s left after retries and async meter errors add errors but no requests.
    f = Figures(requests=5, errors=25, window_seconds=60)
    assert f.error_rate == 1.0 and should_open(f, T)


def test_the_reason_gives_the_figures_and_the_threshold() -> None:
    text = describe(Figures(requests=42, errors=38, window_seconds=60, by_reason={"5xx": 30, "network": 8}), T)
    assert text == ("Stripe circuit open: 38 errors in 42 requests (90%) over 60 s (5xx: 30, network: 8); "
                    "threshold 20 errors and 50%")


def test_the_tally_counts_5xx_and_network_errors_not_4xx_and_not_429_before_retries() -> None:
    h = StripeHealth()
    for status in (200, 400, 404, 429, 500, 503, None):
        h.record_status(status)
    h.record_error(ErrorReason.RATE_LIMITED)
    t = h.drain()
    assert t.requests == 7
    assert dict(t.errors) == {"5xx": 2, "network": 1, "429": 1} and t.error_count == 4
    assert h.drain().requests == 0  # drained


def test_a_tally_that_could_not_be_stored_is_put_back() -> None:
    h = StripeHealth()
    h.record_status(500)
    t = h.drain()
    h.record_status(200)
    h.restore(t)
    again = h.drain()
    assert again.requests == 2 and again.error_count == 1
