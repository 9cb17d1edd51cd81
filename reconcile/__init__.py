"""Usage reconciliation (ReconcileUsage): ledger, counters, our outbox and Stripe's meter summaries compared per key, corrected exactly once.

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from reconcile.tick_workflow import UsageTick
    from reconcile.workflow import ReconcileUsage

    return [ReconcileUsage, UsageTick]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from reconcile.activities import UsageActivities
    from reconcile.tick import TickActivities

    return [*activity_methods(UsageActivities(deps.pool, deps.stripe, deps.settings)),
            *activity_methods(TickActivities(deps.pool, deps.stripe, deps.settings))]
