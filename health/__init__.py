"""Health (Smoke): one trip through Postgres and Stripe via activities, to prove a deployment is wired.

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from health.workflow import Smoke

    return [Smoke]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from health.activities import HealthActivities
    from health.deadman import DeadmanActivities

    return activity_methods(HealthActivities(deps.pool, deps.stripe), DeadmanActivities(deps.settings))
