"""The Stripe circuit breaker (StripeCircuit): Stripe errors past a threshold pause auto-healing
(actor circuit-breaker); a probe closes it and resumes that pause. docs/circuit-breaker.md.

Exports `workflows()` and `build_activities(deps)`: imports are inside the functions so that
the workflow sandbox can import `circuit.types` without asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from circuit.workflow import StripeCircuit

    return [StripeCircuit]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from circuit.activities import CircuitActivities
    from common.deps import activity_methods

    return activity_methods(CircuitActivities(deps.pool, deps.stripe, deps.settings, deps.temporal))
