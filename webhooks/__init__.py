"""Stripe webhooks: the ASGI receiver (`app`) that stores every verified event before answering, ProcessStripeEvent (one event), ReplayWebhooks (catch up from Stripe's /v1/events) and DismissStripeEvent (an operator dismisses a failed event).

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from webhooks.dismiss_workflow import DismissStripeEvent
    from webhooks.process_workflow import ProcessStripeEvent
    from webhooks.replay_workflow import ReplayWebhooks

    return [ProcessStripeEvent, ReplayWebhooks, DismissStripeEvent]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from webhooks.activities import StripeEventActivities

    return activity_methods(StripeEventActivities(deps.pool, deps.stripe))
