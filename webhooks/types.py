"""Webhook jobs (ProcessStripeEvent, ReplayWebhooks): inbox statuses, inputs, results.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

from common.types import STRIPE_EVENT_RETENTION_DAYS, Mode, refuse_plan_mode

# The ApplicationError type of an event id the inbox does not hold: retrying cannot help.
EVENT_NOT_IN_INBOX = "EventNotInInbox"
# ... of a dismissal of an event that did not fail (processed, ignored, or still received).
EVENT_NOT_DISMISSABLE = "EventNotDismissable"


class EventStatus(StrEnum):
    RECEIVED = "received"  # durable in the inbox, effects not yet committed
    PROCESSED = "processed"
    IGNORED = "ignored"  # a type we do not handle
    FAILED = "failed"  # permanent failure, with the error; replay retries it
    DISMISSED = "dismissed"  # failed, then dismissed by an operator: never processed or replayed


class ProcessEventInput(BaseModel):
    """Input of ProcessStripeEvent (workflow id `stripe-event-<event_id>`)."""

    event_id: str = Field(min_length=1)


class ProcessEventResult(BaseModel):
    event_id: str
    type: str
    status: EventStatus
    detail: str | None = None
    already_done: bool = False  # an earlier delivery or replay had already processed it


class ReplayWebhooksInput(BaseModel):
    """Input of ReplayWebhooks. Times are UTC; the window defaults to the last `days` days."""

    since: datetime | None = None
    until: datetime | None = None
    days: int = Field(default=3, ge=1, le=STRIPE_EVENT_RETENTION_DAYS)
    types: list[str] = Field(default_factory=list, max_length=20)  # `*` wildcards allowed
    mode: Mode = Mode.DRY_RUN  # dry-run lists, apply processes; plan is not meaningful here
    actor: str = "system"
    page_size: int = Field(default=100, ge=1, le=100)

    @model_validator(mode="after")
    def _check(self) -> ReplayWebhooksInput:
        refuse_plan_mode(self.mode, "replay")
        if len(self.types) > 1 and any("*" in t for t in self.types):
            raise ValueError("a `*` wildcard works only with a single type (Stripe's rule)")
        for t in (self.since, self.until):
            if t is not None and t.tzinfo is None:
                raise ValueError(f"{t} has no time zone: give UTC times, e.g. 2026-11-01T00:00:00Z")
        if self.since and self.until and self.until <= self.since:
            raise ValueError(f"until {self.until} is not after since {self.since}")
        return self


class ReplayWindow(BaseModel):
    since: datetime
    until: datetime
    types: list[str] = Field(default_factory=list)


class ReplayCounts(BaseModel):
    seen: int = 0  # events Stripe listed in the window
    never_received: int = 0  # listed by Stripe, absent from the inbox
    already_processed: int = 0  # processed or ignored before this replay
    pending: int = 0  # in the inbox but received/failed: to be (re)processed
    replayed: int = 0  # processed by this replay
    ignored: int = 0  # replayed, type not handled
    failed: int = 0  # replayed, failed permanently (kept as failed with the error)
    dismissed: int = 0  # dismissed by an operator: skipped

    def add(self, other: ReplayCounts) -> ReplayCounts:
        return ReplayCounts(**{k: getattr(self, k) + getattr(other, k) for k in ReplayCounts.model_fields})


class SyncInboxInput(BaseModel):
    window: ReplayWindow  # what to list from Stripe
    dry_run: bool
    sweep_since: datetime | None = None  # where the inbox sweep starts, if before window.since
    page_size: int = 100
    sample_limit: int = 200  # how many would-be-replayed ids a dry-run returns


class SyncInboxResult(BaseModel):
    counts: ReplayCounts
    sample: list[str] = Field(default_factory=list)  # dry-run: event ids that would be replayed


class SyncInboxCheckpoint(BaseModel):
    starting_after: str | None = None
    counts: ReplayCounts = Field(default_factory=ReplayCounts)
    sample: list[str] = Field(default_factory=list)


class PendingCursor(BaseModel):
    created: datetime
    event_id: str


class PendingPageInput(BaseModel):
    window: ReplayWindow
    after: PendingCursor | None = None
    limit: int = 100
    # Rows received after this moment belong to live deliveries still in flight, not to replay.
    received_before: datetime


class PendingPageResult(BaseModel):
    event_ids: list[str]
    next_cursor: PendingCursor | None = None


class ProcessPageInput(BaseModel):
    event_ids: list[str]
    workflow_id: str | None = None


class ProcessPageResult(BaseModel):
    counts: ReplayCounts
    failures: list[str] = Field(default_factory=list)  # "evt_...: error", capped


class ProcessPageCheckpoint(BaseModel):
    """Heartbeat of `process_page`: the events before `next` are done, with this result."""

    next: int = 0  # index into ProcessPageInput.event_ids
    result: ProcessPageResult = Field(default_factory=lambda: ProcessPageResult(counts=ReplayCounts()))


class DismissEventInput(BaseModel):
    """Input of DismissStripeEvent (workflow id `dismiss-event-<event_id>`)."""

    event_id: str = Field(min_length=1)
    actor: str = Field(min_length=1)
    reason: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> DismissEventInput:
        if not self.reason.strip() or not self.actor.strip():
            raise ValueError("actor and reason must not be blank")
        return self


class DismissEventActivityInput(BaseModel):
    request: DismissEventInput
    workflow_id: str
    workflow_run_id: str


class DismissEventResult(BaseModel):
    event_id: str
    type: str
    error: str | None  # the failure the event was dismissed with
    dismissed_at: datetime
    dismissed_by: str
    reason: str
    already_dismissed: bool = False  # dismissed before (by this actor or another): nothing written now


class ReplayProgress(BaseModel):
    phase: str = "starting"  # listing | processing | done
    counts: ReplayCounts = Field(default_factory=ReplayCounts)


class ReplayResult(BaseModel):
    workflow_id: str
    mode: Mode
    since: datetime
    until: datetime
    types: list[str]
    counts: ReplayCounts
    sample: list[str] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
