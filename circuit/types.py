"""The Stripe circuit breaker's states, decisions and activity inputs/outputs.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

# Who the circuit's pause is recorded as (audit log, `status`): the circuit only ever resumes a
# pause with this actor.
CIRCUIT_ACTOR = "circuit-breaker"
CIRCUIT_ID_PREFIX = "billing-stripe-circuit"


def circuit_id(task_queue: str) -> str:
    """One StripeCircuit per task queue (per deployment)."""
    return f"{CIRCUIT_ID_PREFIX}:{task_queue}"


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Transition(StrEnum):
    NONE = "none"
    OPENED = "opened"  # closed -> open: pause auto-healing
    HALF_OPEN = "half_open"  # open long enough: probe
    CLOSED = "closed"  # probe succeeded
    REOPENED = "reopened"  # probe failed: open again, same episode


class CheckResult(BaseModel):
    state: CircuitState
    transition: Transition = Transition.NONE
    reason: str | None = None
    since: datetime | None = None
    next_check_seconds: float = 10.0
    # Closed by a probe and auto-healing is still paused by the circuit: resume it.
    resume: bool = False


class ProbeResult(BaseModel):
    ok: bool
    error: str | None = None


class CircuitInput(BaseModel):
    """StripeCircuit takes no options (settings come from the worker)."""


class AutohealSignal(BaseModel):
    reason: str
