"""Notifications: what is sent, to whom, and the dispatcher's input and results.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

import hashlib
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

# One NotificationDispatcher per task queue (per deployment): its workflow id.
DISPATCHER_ID_PREFIX = "billing-notifications"


def dispatcher_id(task_queue: str) -> str:
    return f"{DISPATCHER_ID_PREFIX}:{task_queue}"


MAX_TITLE = 300


class NotificationKind(StrEnum):
    PLAN_AWAITING_APPROVAL = "plan_awaiting_approval"
    RUN_FAILED = "run_failed"
    RUN_STUCK = "run_stuck"
    DRIFT_BEYOND_EPSILON = "drift_beyond_epsilon"
    CIRCUIT_OPENED = "circuit_opened"
    CIRCUIT_CLOSED = "circuit_closed"
    AUTOHEAL_PAUSED_TOO_LONG = "autoheal_paused_too_long"
    DAILY_CHECK_FAILED = "daily_check_failed"


class Severity(StrEnum):
    """PagerDuty Events v2's severities (the JSON webhook and Slack show them too)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Notification(BaseModel):
    """One notification. `subject` (a run id, a circuit episode, a pause start) and `kind` make
    its deduplication key: the same pair is recorded, and so sent, once."""

    kind: NotificationKind
    subject: str = Field(min_length=1)
    title: str = Field(min_length=1)
    text: str = ""
    severity: Severity = Severity.WARNING
    # The exact CLI commands that act on it (approve/reject a plan, resume, ...).
    commands: list[str] = Field(default_factory=list)
    # Figures worth a glance: counts, top keys, the error.
    fields: dict[str, str] = Field(default_factory=dict)
    link: str | None = None
    # Closes an earlier notification (the circuit closing resolves its opening): PagerDuty gets
    # a `resolve` for that one's dedup_key.
    resolves: str | None = None

    @field_validator("title")
    @classmethod
    def _short_title(cls, title: str) -> str:
        # A title names a run id, which can be long: cut, never refused (a notification must
        # never fail what it reports).
        return title if len(title) <= MAX_TITLE else title[: MAX_TITLE - 1] + "…"

    def dedupe_key(self) -> str:
        return dedupe_key(self.subject, self.kind)


def dedupe_key(subject: str, kind: NotificationKind) -> str:
    return f"{subject}|{kind.value}"


def event_id(key: str) -> str:
    """The id every target sees for the notification of this dedupe key, whatever attempt sends
    it (JSON webhook `Idempotency-Key`, PagerDuty `dedup_key`)."""
    return "brn_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def run_subject(run_id: str, workflow_run_id: str | None) -> str:
    """A run's notification subject: its workflow id and first execution (a reused workflow id
    is a new run; continue-as-new is the same run)."""
    return f"{run_id}@{workflow_run_id}" if workflow_run_id else run_id


def workflow_link(ui_url: str, namespace: str, workflow_id: str) -> str:
    return f"{ui_url.rstrip('/')}/namespaces/{namespace}/workflows/{workflow_id}"


class EmitResult(BaseModel):
    recorded: bool  # False: the same (subject, kind) was recorded before; nothing new


class DeliverInput(BaseModel):
    limit: int = Field(default=100, ge=1, le=1000)


class DeliverResult(BaseModel):
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    emitted: int = 0  # sweep notifications recorded (stuck runs, long pauses)
    poll_seconds: float = 5.0  # NOTIFY_POLL_SECONDS: when the next round is due


class DispatcherInput(BaseModel):
    """NotificationDispatcher takes no options (settings come from the worker)."""


class WakeRequest(BaseModel):
    reason: str = ""
