"""Types of the paged Stripe-to-Postgres runs (resync, credit repair): scope, run context, errors.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from common.audit import AuditAction, AuditInput
from common.types import Mode

STRIPE_PAGE_MAX = 100  # Stripe's largest list page


MAX_SAMPLE = 50  # ids listed per finding in a report


def refuse_plan_mode(mode: Mode, what: str) -> None:
    if mode == Mode.PLAN:
        raise ValueError(f"{what} supports dry-run and apply, not plan")


class ErrorType(StrEnum):
    """`ApplicationError.type` of the permanent failures of this family."""

    UNKNOWN_CUSTOMER = "UnknownCustomer"
    NEGATIVE_BALANCE = "NegativeBalance"
    INVALID_CHECKOUT = "InvalidCheckout"


# What no retry of a paged run's activity can fix (its retry policies list them).
PERMANENT_ERRORS: tuple[str, ...] = tuple(e.value for e in ErrorType)


class ResolveScopeInput(BaseModel):
    customer_id: str | None = None  # our customer id; None = every customer


class RunScope(BaseModel):
    """Who a run covers. `stripe_customer_id` is set when `customer_id` is."""

    customer_id: str | None = None
    stripe_customer_id: str | None = None


class PagedRunContext(BaseModel):
    run_id: str  # = workflow id (stable across continue-as-new)
    workflow_run_id: str
    scope: RunScope
    mode: Mode
    actor: str
    reason: str
    # An explicit operator action (`subscriptions sync`): proceeds while auto-healing is paused.
    manual: bool = False

    def audit_entry(
        self, action: AuditAction, *, entity_type: str, entity_id: str, idempotency_key: str,
        customer_id: str | None, before: dict[str, Any] | None, after: dict[str, Any] | None,
    ) -> AuditInput:
        """The audit row of one of this run's writes: its actor, reason and workflow ids."""
        return AuditInput(actor=self.actor, action=action, entity_type=entity_type, entity_id=entity_id,
                          reason=self.reason, before=before, after=after, workflow_id=self.run_id,
                          run_id=self.workflow_run_id, idempotency_key=idempotency_key,
                          customer_id=customer_id)


class ContextInput(BaseModel):
    """Start of a run: resolve the scope (unknown customer -> non-retryable error) and clear the
    run's scratch rows left by an earlier run under the same workflow id."""

    run_id: str
    workflow_run_id: str
    customer: str | None = None
    mode: Mode
    actor: str
    reason: str
    manual: bool = False


class CleanupInput(BaseModel):
    run_id: str
