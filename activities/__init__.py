"""Every job package's activities, built from one set of dependencies: the one list the worker
registers. Each job exports its activities with `build_activities(deps)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.deps import Dependencies
from workflows import JOBS


def all_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    return [fn for job in JOBS for fn in job.build_activities(deps)]
