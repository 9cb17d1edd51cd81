"""AutoHealControl: the global pause switch and its broadcast.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from common.types import PauseRequest

AUTOHEAL_WORKFLOW_ID = "billing-autoheal"  # the one AutoHealControl workflow


class AutohealView(BaseModel):
    paused: bool = False
    since: datetime | None = None
    actor: str | None = None
    reason: str | None = None


class SetAutohealInput(BaseModel):
    paused: bool
    actor: str
    reason: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    only_if_paused_by: str | None = None  # see PauseRequest.only_if_paused_by


class BroadcastInput(BaseModel):
    signal: str  # "pause" | "resume"
    request: PauseRequest
    workflow_types: list[str]


class BroadcastResult(BaseModel):
    signalled: list[str] = Field(default_factory=list)


class AutohealControlInput(BaseModel):
    """AutoHealControl takes no options; the state lives in billing.autoheal_state."""
