"""The rolling read-back (RollingReadBack): every (customer, meter) key compared with Stripe's
summaries once per cycle, in slices spread over the cycle under a share of the summary budget
(docs/reconciliation.md "Three paths").

Exports `workflows()` and `build_activities(deps)` like every job package; imports are inside
the functions so that importing `readback.types` never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from readback.workflow import RollingReadBack

    return [RollingReadBack]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from readback.activities import ReadBackActivities

    return activity_methods(ReadBackActivities(deps.pool, deps.stripe, deps.settings))
