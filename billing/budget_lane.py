"""A lane of the shared Stripe budget (billing/budget.py): a share of one endpoint's limit that
one kind of work may use on top of the account's and the endpoint's buckets. The rolling
read-back reads meter summaries in the lane `readback` so that it never takes more than its
configured share (docs/stripe-budget.md "Lanes"). Pure: workflows' input models carry it."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field


class BudgetLane(BaseModel, frozen=True):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_-]*$")
    share: Decimal = Field(gt=0, le=1)  # of the endpoint's limit (Stripe's, before the reserved share)
