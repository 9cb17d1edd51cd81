"""The circuit breaker's pure decisions: does a window of Stripe outcomes open the circuit, and
how it is told (tests/unit/test_circuit_policy.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figures:
    """Stripe's answers to every worker over the window: requests, and errors by reason."""

    requests: int
    errors: int
    window_seconds: float
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        # Errors without a request of their own (429s left after retries, async meter errors)
        # cannot make the rate exceed 1.
        return self.errors / max(self.requests, self.errors, 1)


@dataclass(frozen=True)
class Threshold:
    min_errors: int
    error_rate: float


def should_open(f: Figures, t: Threshold) -> bool:
    """Both: enough errors to mean something, and a large enough share of what was asked."""
    return f.errors >= t.min_errors and f.error_rate >= t.error_rate


def describe(f: Figures, t: Threshold) -> str:
    """The pause's reason, with the figures: what an operator reads in `status` and the audit."""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(f.by_reason.items()) if v)
    return (f"Stripe circuit open: {f.errors} errors in {f.requests} requests ({f.error_rate:.0%}) "
            f"over {f.window_seconds:.0f} s" + (f" ({reasons})" if reasons else "")
            + f"; threshold {t.min_errors} errors and {t.error_rate:.0%}")
