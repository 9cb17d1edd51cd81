"""Daily checks (DailyChecks): active subscriptions local vs Stripe, webhook events per day vs
Stripe's /v1/events, usage without counters, stale counters and the inbox backlog; results
stored for `status`, metrics and alerts (docs/checks.md).

Exports `workflows()` and `build_activities(deps)` like every job package; imports are inside
the functions so that importing `checks.types` never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from checks.workflow import DailyChecks

    return [DailyChecks]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from checks.activities import CheckActivities
    from common.deps import activity_methods

    return activity_methods(CheckActivities(deps.pool, deps.stripe, deps.settings))
