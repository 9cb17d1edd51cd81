"""Stripe's price arithmetic (billing/pricing.py): per unit, graduated and volume tiers, and the
amount of an adjustment of a billed quantity. Worked numbers: docs/reconciliation.md."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import Price, PriceError, Tier, adjustment_amount, amount, exact_amount

D = Decimal
PER_UNIT = Price.from_stripe({"id": "price_u", "currency": "usd", "billing_scheme": "per_unit",
                              "unit_amount": 2, "unit_amount_decimal": "2"})
DECIMAL_UNIT = Price.from_stripe({"id": "price_d", "currency": "usd", "unit_amount_decimal": "0.35"})
GRADUATED = Price.from_stripe({"id": "price_g", "currency": "usd", "billing_scheme": "tiered",
                               "tiers_mode": "graduated", "tiers": [
                                   {"up_to": 1000, "unit_amount": 2, "unit_amount_decimal": "2"},
                                   {"up_to": None, "unit_amount_decimal": "0.5", "flat_amount": 100}]})
VOLUME = Price.from_stripe({"id": "price_v", "currency": "usd", "billing_scheme": "tiered",
                            "tiers_mode": "volume", "tiers": [
                                {"up_to": 100, "unit_amount": 10}, {"up_to": "inf", "unit_amount": 7}]})


@pytest.mark.parametrize(("price", "qty", "expected"), [
    (PER_UNIT, D(1500), 3000),
    (DECIMAL_UNIT, D(3), 1),  # 1.05 -> 1
    (DECIMAL_UNIT, D(10), 4),  # 3.5 -> 4 (half up)
    (GRADUATED, D(900), 1800),
    (GRADUATED, D(1000), 2000),
    (GRADUATED, D(1200), 2200),  # 1000 x 2 + 200 x 0.5 + 100 flat
    (VOLUME, D(100), 1000),
    (VOLUME, D(150), 1050),  # every unit at the second tier
    (GRADUATED, D(0), 0),
])
def test_amounts_follow_stripes_rules(price, qty, expected):
    assert amount(price, qty) == expected


def test_adjustments_are_priced_at_the_margin():
    # Billed 900, used 1200: 100 more at 2, then 200 at 0.5 and the second tier's flat 100.
    assert adjustment_amount(GRADUATED, D(900), D(1200)) == 2200 - 1800 == 400
    assert adjustment_amount(PER_UNIT, D(1000), D(1500)) == 1000
    # Over-billed: negative; volume: the whole quantity moves tier (150 -> 90 units).
    assert adjustment_amount(VOLUME, D(150), D(90)) == 900 - 1050
    assert adjustment_amount(GRADUATED, D(1200), D(1200)) == 0


def test_unusable_prices_are_refused():
    with pytest.raises(PriceError, match="expand"):
        Price.from_stripe({"id": "p", "billing_scheme": "tiered", "tiers_mode": "graduated"})
    with pytest.raises(PriceError, match="inf"):
        Price.from_stripe({"id": "p", "billing_scheme": "tiered", "tiers_mode": "volume",
                           "tiers": [{"up_to": 5, "unit_amount": 1}]})
    with pytest.raises(PriceError, match="unit amount"):
        Price.from_stripe({"id": "p", "billing_scheme": "per_unit"})
    with pytest.raises(PriceError, match="negative"):
        amount(PER_UNIT, D(-1))


quantities = st.decimals(min_value=0, max_value=10**7, places=3, allow_nan=False, allow_infinity=False)
tiers = st.lists(st.tuples(st.integers(1, 1000), st.integers(0, 500), st.integers(0, 1000)), min_size=1, max_size=4)


def _graduated(spec: list[tuple[int, int, int]]) -> Price:
    ups, total = [], 0
    for width, _, _ in spec:
        total += width
        ups.append(D(total))
    ts = [Tier(up, D(unit), D(flat)) for up, (_, unit, flat) in zip(ups, spec, strict=True)]
    ts[-1] = Tier(None, ts[-1].unit_amount, ts[-1].flat_amount)
    return Price("p", "usd", "tiered", D(0), "graduated", tuple(ts))


@given(spec=tiers, a=quantities, b=quantities)
def test_graduated_is_monotone_and_additive_over_adjustments(spec, a, b):
    price = _graduated(spec)
    lo, hi = min(a, b), max(a, b)
    assert exact_amount(price, lo) <= exact_amount(price, hi)
    # Billed a, used b: billing the adjustment on top lands exactly on what b costs.
    assert amount(price, a) + adjustment_amount(price, a, b) == amount(price, b)


@given(a=quantities, b=quantities, c=quantities)
def test_successive_adjustments_add_up_to_one(a, b, c):
    # Two adjustments (a -> b, then b -> c) are worth what one (a -> c) is: re-planning after a
    # first adjustment never double-bills.
    assert (adjustment_amount(GRADUATED, a, b) + adjustment_amount(GRADUATED, b, c)
            == adjustment_amount(GRADUATED, a, c))
