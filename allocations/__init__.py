"""Allocations (ReconcileAllocations): duration usage of metered allocations (compute, GPUs,
seats by time) against usage records, the ledger, Stripe meters and payments.

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing the job's types (the workflow sandbox does) never pulls in asyncpg or stripe.
The application-facing contract is `allocations.contract` (docs/durations.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from allocations.workflow import ReconcileAllocations

    return [ReconcileAllocations]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from allocations.activities import AllocationActivities
    from common.deps import activity_methods

    return activity_methods(AllocationActivities(deps.pool, deps.stripe))
