"""Types every job shares: the run mode, run status and pause requests (and, re-exported for
reconcile/, the audit row `common.audit.AuditInput`).

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from common.audit import AuditInput

__all__ = ["AuditInput", "Mode", "PauseRequest", "RunStatus", "STRIPE_EVENT_RETENTION_DAYS", "refuse_plan_mode"]


class Mode(StrEnum):
    DRY_RUN = "dry-run"  # plan and report; no corrective write anywhere
    APPLY = "apply"  # plan and apply (over-reporting beyond epsilon is held for approval)
    PLAN = "plan"  # store the plan, wait for approve/reject, apply exactly that plan


def refuse_plan_mode(mode: Mode, what: str) -> None:
    """For the jobs that only observe or apply: plan mode is bad input."""
    if mode == Mode.PLAN:
        raise ValueError(f"{what} supports dry-run and apply, not plan")


class RunStatus(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    APPLYING = "applying"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


class ApprovalDecision(BaseModel):
    """An approve/reject update of a stored plan (ReconcileUsage, ReconcileAllocations)."""

    actor: str = Field(min_length=1)
    reason: str | None = None


class PauseRequest(BaseModel):
    actor: str = Field(min_length=1)
    reason: str | None = None
    # A resume of the global switch that applies only while this actor's pause is in force (the
    # Stripe circuit breaker resumes its own pause, never an operator's).
    only_if_paused_by: str | None = None


STRIPE_EVENT_RETENTION_DAYS = 30  # GET /v1/events only returns the last 30 days
