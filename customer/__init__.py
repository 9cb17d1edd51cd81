"""One customer end to end: InspectCustomer (`customer show`: Stripe and Postgres side by side,
every domain, mismatches named) and RepairCustomer (`customer repair`: that customer's
subscriptions, invoices, credits and usage fixed in one audited run).

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from customer.inspect_workflow import InspectCustomer
    from customer.repair_workflow import RepairCustomer

    return [InspectCustomer, RepairCustomer]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from customer.activities import CustomerActivities

    return activity_methods(CustomerActivities(deps.pool, deps.stripe, deps.settings))
