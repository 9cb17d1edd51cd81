"""Revenue reconciliation: RevenueReconciliation, per UTC day the mirror's paid invoices (and
refunds) against Stripe's invoices, invoice payments, refunds and balance transactions;
per-invoice findings, fixed by a resync of the invoice mirror (docs/revenue.md).

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from revenue.workflow import RevenueReconciliation

    return [RevenueReconciliation]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from revenue.activities import RevenueActivities

    return activity_methods(RevenueActivities(deps.pool, deps.stripe))
