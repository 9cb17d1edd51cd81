"""Types every job shares: the run mode, run status, audit rows and pause requests.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Mode(StrEnum):
    DRY_RUN = "dry-run"  # plan and report; no corrective write anywhere
    APPLY = "apply"  # plan and apply (over-reporting beyond epsilon is held for approval)
    PLAN = "plan"  # store the plan, wait for approve/reject, apply exactly that plan


class RunStatus(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    APPLYING = "applying"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


class PauseRequest(BaseModel):
    actor: str = Field(min_length=1)
    reason: str | None = None


class AuditInput(BaseModel):
    actor: str
    action: str
    entity_type: str
    entity_id: str
    reason: str | None = None
    after: dict | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    idempotency_key: str | None = None
    customer_id: str | None = None  # the customer the write touched, for `audit --customer`
    before: dict | None = None


STRIPE_EVENT_RETENTION_DAYS = 30  # GET /v1/events only returns the last 30 days
