"""The shared Temporal kit every job package uses (docs/architecture.md, "Shared Temporal kit"):
the client and data converter (`client`), activity options (`options`), the heartbeat and
checkpoint helper (`heartbeat`), the audit writer and action vocabulary (`audit`), failure
helpers (`failures`), shared types (`types`), the paged-run base (`paged` types, `paged_run`
workflow base, `paged_activities`) and activity dependencies (`deps`).

Like a job package it exports `build_activities(deps)`: the activities every paged run shares,
registered once. Imports are inside the function so that importing the kit's types (the
workflow sandbox does) never pulls in asyncpg."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from common.paged_activities import PagedRunActivities

    return activity_methods(PagedRunActivities(deps.pool))
