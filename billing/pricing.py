"""Stripe's price arithmetic, pure: what a quantity of a recurring price costs, and what an
adjustment of a billed quantity is worth. Minor units, `Decimal` quantities, no IO.

Stripe's rules (docs.stripe.com/products-prices/pricing-models):
- `billing_scheme=per_unit`: quantity x `unit_amount_decimal`;
- `tiered` + `tiers_mode=graduated`: each tier prices the units that fall in it (its
  `unit_amount_decimal`), plus its `flat_amount` once any unit reaches it;
- `tiered` + `tiers_mode=volume`: the tier the whole quantity falls in prices every unit, plus
  its flat amount.
A line's amount is rounded to whole minor units, half up ([U]: Stripe documents rounding of
decimal unit amounts per line, not the direction of a tie).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


class PriceError(ValueError):
    """A price this arithmetic cannot use (a tier without amounts, an unknown scheme)."""


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # None = the last tier (`inf`)
    unit_amount: Decimal = Decimal(0)
    flat_amount: Decimal = Decimal(0)


@dataclass(frozen=True)
class Price:
    id: str
    currency: str
    billing_scheme: str = "per_unit"  # per_unit | tiered
    unit_amount: Decimal = Decimal(0)  # per_unit: unit_amount_decimal
    tiers_mode: str | None = None  # graduated | volume
    tiers: tuple[Tier, ...] = field(default_factory=tuple)

    @classmethod
    def from_stripe(cls, p: dict[str, Any]) -> Price:
        """A Stripe price object (tiers expanded) as this model; PriceError if unusable."""
        scheme = p.get("billing_scheme") or "per_unit"
        if scheme == "per_unit":
            unit = p.get("unit_amount_decimal") or p.get("unit_amount")
            if unit is None:
                raise PriceError(f"price {p.get('id')} has no unit amount")
            return cls(p["id"], p.get("currency") or "usd", scheme, Decimal(str(unit)))
        if scheme != "tiered" or p.get("tiers_mode") not in ("graduated", "volume"):
            raise PriceError(f"price {p.get('id')}: unsupported billing_scheme {scheme!r} / tiers_mode")
        if not p.get("tiers"):
            raise PriceError(f"price {p.get('id')} is tiered but its tiers were not read (expand[]=tiers)")
        tiers = tuple(
            Tier(None if t.get("up_to") in (None, "inf") else Decimal(str(t["up_to"])),
                 _amount(t, "unit_amount"), _amount(t, "flat_amount"))
            for t in p["tiers"])
        if tiers[-1].up_to is not None:
            raise PriceError(f"price {p.get('id')}: the last tier must be up to inf")
        return cls(p["id"], p.get("currency") or "usd", scheme, Decimal(0), p["tiers_mode"], tiers)


def _amount(t: dict[str, Any], name: str) -> Decimal:
    v = t.get(f"{name}_decimal")
    if v is None:
        v = t.get(name)
    return Decimal(str(v)) if v is not None else Decimal(0)


def exact_amount(price: Price, quantity: Decimal) -> Decimal:
    """What `quantity` units cost, unrounded (minor units)."""
    if quantity < 0:
        raise PriceError(f"negative quantity {quantity}")
    if price.billing_scheme == "per_unit":
        return quantity * price.unit_amount
    if quantity == 0:
        return Decimal(0)
    if price.tiers_mode == "volume":
        tier = next(t for t in price.tiers if t.up_to is None or quantity <= t.up_to)
        return quantity * tier.unit_amount + tier.flat_amount
    total, floor = Decimal(0), Decimal(0)
    for t in price.tiers:
        if quantity <= floor:
            break
        top = quantity if t.up_to is None else min(quantity, t.up_to)
        total += (top - floor) * t.unit_amount + t.flat_amount
        floor = top
    return total


def amount(price: Price, quantity: Decimal) -> int:
    """What Stripe bills for `quantity` units on one line: whole minor units, half up."""
    return int(exact_amount(price, quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def adjustment_amount(price: Price, billed: Decimal, true_quantity: Decimal) -> int:
    """What the customer owes (> 0) or is owed (< 0) when a period was billed for `billed`
    units and `true_quantity` were used: the difference of the two lines' amounts, so tiers are
    priced at the marginal rate of the units in question (graduated: the 1,001st unit at the
    second tier's rate; volume: the whole quantity may move tier)."""
    return amount(price, true_quantity) - amount(price, billed)
