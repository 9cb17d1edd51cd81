"""How Stripe is answering this process: a tally of requests and errors, kept in memory by the
gateway and flushed to Postgres by the worker (circuit/flusher.py), where the StripeCircuit
workflow adds up every worker's (docs/circuit-breaker.md).

What counts as an error: a 5xx, a network error or timeout, a 429 still there after the
gateway's own retries, and an asynchronous meter error report. 4xx answers are Stripe working
(our request was wrong): they count as requests, not errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class ErrorReason:
    SERVER = "5xx"
    NETWORK = "network"
    RATE_LIMITED = "429"
    METER_ERROR = "meter_error"


@dataclass
class Tally:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class StripeHealth:
    def __init__(self) -> None:
        self._tally = Tally()

    def record_status(self, status: int | None) -> None:
        """One HTTP request answered `status` (None: no answer, a network error or timeout).
        A 429 is not an error yet: the gateway retries it (`record_rate_limited` if that fails)."""
        self._tally.requests += 1
        if status is None:
            self._tally.errors[ErrorReason.NETWORK] += 1
        elif status >= 500:
            self._tally.errors[ErrorReason.SERVER] += 1

    def record_error(self, reason: str) -> None:
        """An error not tied to one HTTP request: 429s left after retries, async meter errors."""
        self._tally.errors[reason] += 1

    def drain(self) -> Tally:
        """The tally since the last drain (and a fresh one from now on)."""
        tally, self._tally = self._tally, Tally()
        return tally

    def restore(self, tally: Tally) -> None:
        """Put back a drained tally that could not be stored (Postgres down): nothing is lost."""
        self._tally.requests += tally.requests
        self._tally.errors.update(tally.errors)


# The process's one tally: every StripeGateway of the process records into it.
HEALTH = StripeHealth()


def record_meter_error_reports(count: int = 1) -> None:
    """Stripe reported meter events it rejected asynchronously (`v1.billing.meter.error_report_
    triggered`): the handler of that event calls this, so the circuit counts them."""
    for _ in range(count):
        HEALTH.record_error(ErrorReason.METER_ERROR)
