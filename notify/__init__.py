"""Notifications (NotificationDispatcher): a durable, deduplicated outbox of what operators are
told (a plan awaiting approval, a failed or stuck run, drift beyond epsilon, the Stripe circuit,
a long pause, a failed daily check), delivered to Slack, PagerDuty and JSON webhooks.
docs/notifications.md.

Exports `workflows()` and `build_activities(deps)`: imports are inside the functions so that
the workflow sandbox can import `notify.types` without asyncpg or httpx."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from notify.workflow import NotificationDispatcher

    return [NotificationDispatcher]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from notify.activities import NotifyActivities

    return activity_methods(NotifyActivities(deps.pool, deps.settings, deps.temporal))
