"""Catch-up backfill (CatchUpBackfill): one reconciliation child per day of an outage, then webhook replay and resync for the range.

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from backfill.workflow import CatchUpBackfill

    return [CatchUpBackfill]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from backfill.activities import BackfillActivities
    from common.deps import activity_methods

    return activity_methods(BackfillActivities(deps.pool))
