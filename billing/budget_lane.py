"""A lane of the shared Stripe budget (billing/budget.py): a share of one endpoint's limit that
one kind of work may use on top of the account's and the endpoint's buckets. The rolling
read-back reads meter summaries in the lane `readback` so that it never takes more than its
configured share (docs/stripe-budget.md "Lanes"). Pure: workflows' input models carry it."""

from __future__ import annotations

from decimal import Decimal

from aiolimiter import AsyncLimiter
from pydantic import BaseModel, Field

# Stripe's default per-endpoint limit: a lane's share is of this when no shared budget holds the
# endpoint's real limit (STRIPE_BUDGET=process).
DEFAULT_ENDPOINT_LIMIT = 25


class BudgetLane(BaseModel, frozen=True):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_-]*$")
    share: Decimal = Field(gt=0, le=1)  # of the endpoint's limit (Stripe's, before the reserved share)


class ProcessLanes:
    """Lanes without the shared budget (STRIPE_BUDGET=process): this process's own limiter per
    (lane, endpoint), one request per 1/rate s, so no wall second holds more than the rate."""

    def __init__(self) -> None:
        self._limiters: dict[tuple[str, str], AsyncLimiter] = {}

    async def acquire(self, lane: BudgetLane, endpoint: str) -> None:
        key = (lane.name, endpoint)
        if key not in self._limiters:
            rate = max(1, int(DEFAULT_ENDPOINT_LIMIT * lane.share))
            self._limiters[key] = AsyncLimiter(max_rate=1, time_period=1.0 / rate)
        await self._limiters[key].acquire()
