"""Pausing auto-healing (AutoHealControl): the global observe-only switch, audited, broadcast to running runs.

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from autoheal.workflow import AutoHealControl

    return [AutoHealControl]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from autoheal.activities import AutohealActivities
    from common.deps import activity_methods

    return activity_methods(AutohealActivities(deps.pool, deps.temporal))
