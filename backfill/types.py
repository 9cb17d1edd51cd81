"""CatchUpBackfill: inputs, per-day outcomes, progress and result.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

from common.types import Mode
from reconcile.types import Counts


class CatchUpBackfillInput(BaseModel):
    """Input of CatchUpBackfill (also the JSON for `temporal workflow start` and the UI)."""

    start_date: date
    end_date: date  # inclusive
    mode: Mode = Mode.DRY_RUN
    customers: list[str] = Field(default_factory=list)
    meters: list[str] = Field(default_factory=list)
    max_concurrent_days: int = Field(default=2, ge=1, le=16)
    replay_webhooks: bool = True  # for the part of the range within Stripe's 30-day retention
    resync_subscriptions: bool = True
    actor: str = "system"
    settle_seconds: int | None = None
    auto_approve_over_reporting: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> CatchUpBackfillInput:
        if self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        if (self.end_date - self.start_date).days + 1 > 400:
            raise ValueError("a backfill spans at most 400 days")
        if self.mode == Mode.PLAN:
            raise ValueError("backfill supports dry-run and apply; use reconcile --plan for one window")
        return self


class DayOutcome(StrEnum):
    DONE = "done"  # reconciled by this backfill
    ALREADY_DONE = "already_done"  # a completed run for this day existed: nothing started
    FAILED = "failed"
    RUNNING_ELSEWHERE = "running_elsewhere"  # another backfill's child is on it
    OBSERVE_ONLY = "observe_only"  # auto-healing was paused throughout: reported, not corrected


class DayResult(BaseModel):
    day: date
    run_id: str
    outcome: DayOutcome
    error: str | None = None
    counts: Counts | None = None


class BackfillProgress(BaseModel):
    phase: str = "starting"  # days | replay | resync | done
    days_total: int = 0
    days_done: int = 0
    days_in_flight: list[date] = Field(default_factory=list)
    days_failed: list[date] = Field(default_factory=list)
    days_already_done: int = 0
    paused: bool = False  # auto-healing is paused: no new day starts until `resume`


class BackfillResult(BaseModel):
    workflow_id: str
    mode: Mode
    start_date: date
    end_date: date
    days: list[DayResult]
    counts: Counts  # summed over the days reconciled by this backfill
    replay: dict | None = None  # ReplayWebhooks' result, or why it was skipped
    resync: dict | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def failed_days(self) -> list[date]:
        return [d.day for d in self.days if d.outcome in (DayOutcome.FAILED, DayOutcome.OBSERVE_ONLY)]


class CompletedRunsInput(BaseModel):
    run_ids: list[str]


class CompletedRunsResult(BaseModel):
    completed: list[str]
