"""Types of the paged Stripe-to-Postgres runs (resync, credit repair): their input and carried
state, scope, run context, errors. The workflow base is `common.paged_run.PagedRun`; the shared
activities are in `common.paged_activities`.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from common.audit import AuditAction, AuditInput
from common.types import Mode, refuse_plan_mode

STRIPE_PAGE_MAX = 100  # Stripe's largest list page


MAX_SAMPLE = 50  # ids listed per finding in a report


def sample(target: list[str], value: str, limit: int = MAX_SAMPLE) -> None:
    """Keep `value` as an example of a finding, up to `limit` of them."""
    if len(target) < limit:
        target.append(value)


class ErrorType(StrEnum):
    """`ApplicationError.type` of the permanent failures of this family."""

    UNKNOWN_CUSTOMER = "UnknownCustomer"
    NEGATIVE_BALANCE = "NegativeBalance"
    INVALID_CHECKOUT = "InvalidCheckout"
    # An idempotency key given again for a different write (another customer or amount).
    IDEMPOTENCY_KEY_REUSED = "IdempotencyKeyReused"


# What no retry of a paged run's activity can fix (its retry policies list them).
PERMANENT_ERRORS: tuple[str, ...] = tuple(e.value for e in ErrorType)


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


def run_write_key(ctx: PagedRunContext, kind: str, entity: str) -> str:
    """The audit idempotency key of one corrective write of a paged run: the write's kind, the
    run's workflow id *and* its first execution's run id, and the entity. Unique per write: a run
    fixes an entity at most once (a retried page finds its committed fix and writes nothing), and
    a later run under the same workflow id (`--id` again, a schedule) is a new execution whose
    fixes are new writes with their own audit rows. (A key of workflow id and entity alone made a
    re-run's fix of the same entity unaudited: its insert hit the earlier row's key.)"""
    return f"{kind}:{ctx.run_id}:{ctx.workflow_run_id}:{entity}"


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


class PagedRunInput(BaseModel):
    """What every paged run takes (also the JSON for `temporal workflow start`); a job's input
    adds its own fields and `carried`, its state across continue-as-new (callers leave it
    empty)."""

    RUN_NAME: ClassVar[str] = "this run"  # in the refusal of plan mode

    customer: str | None = None  # our customer id; None = every customer
    mode: Mode = Mode.DRY_RUN
    actor: str = Field(default="system", min_length=1)
    reason: str | None = None  # recorded in every audit row
    page_size: int = Field(default=STRIPE_PAGE_MAX, ge=1, le=STRIPE_PAGE_MAX)
    pages_per_activity: int = Field(default=10, ge=1, le=1000)
    carried: PagedCarry | None = None

    @model_validator(mode="after")
    def _refuse_plan(self) -> PagedRunInput:
        refuse_plan_mode(self.mode, self.RUN_NAME)
        return self


class PagedCarry(BaseModel):
    """The state a paged run carries across continue-as-new: a job's carry adds its phase (an
    enum whose last member is DONE = "done"), counts and findings."""

    context: PagedRunContext
    phase: str
    cursor: str | None = None  # where the current phase goes on
    paused: bool = False  # an apply page found auto-healing paused and wrote nothing


PagedRunInput.model_rebuild()
