"""Credits (RepairCredits, AdjustCredits): one grant per paid credit checkout, balances equal to their ledger, audited manual adjustments, and the ledger checks.

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from credits.adjust_workflow import AdjustCredits
    from credits.repair_workflow import RepairCredits

    return [RepairCredits, AdjustCredits]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from credits.activities import CreditActivities
    from credits.checks import LedgerCheckActivities
    from webhooks.activities import StripeEventActivities

    return activity_methods(CreditActivities(deps.pool, deps.stripe, StripeEventActivities(deps.pool, deps.stripe)),
                            LedgerCheckActivities(deps.pool, deps.stripe))
