"""Every activity the worker registers, built from one set of dependencies: the shared kit's
(`common.build_activities`) once, then every job package's (`build_activities(deps)`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import common
from common.deps import Dependencies
from workflows import JOBS


def all_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    return [fn for pkg in (common, *JOBS) for fn in pkg.build_activities(deps)]
