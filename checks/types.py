"""Daily checks: what a run takes, what each check reports, and the run's result.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from common.types import STRIPE_EVENT_RETENTION_DAYS

# At most this many ids (subscriptions, events, counters) are listed per check: the counts are
# always exact, the lists are there to start the investigation.
DEFAULT_SAMPLE_SIZE = 20
MAX_SAMPLE_SIZE = 1000
STRIPE_MAX_PAGE_SIZE = 100


class CheckName(StrEnum):
    """`daily_check_results.check_name` and the `check` label of the metrics."""

    ACTIVE_SUBSCRIPTIONS = "active_subscriptions"  # active subscriptions, local mirror vs Stripe
    WEBHOOK_GAPS = "webhook_gaps"  # Stripe's /v1/events per UTC day and type vs the inbox
    USAGE_WITHOUT_COUNTER = "usage_without_counter"  # usage of a period with no counter row
    STALE_COUNTERS = "stale_counters"  # counters no successful reconciliation covered for N days
    INBOX_BACKLOG = "inbox_backlog"  # inbox rows received/failed for longer than the threshold


class DailyChecksInput(BaseModel):
    """Every field is optional: unset thresholds come from the worker's settings
    (CHECKS_STALE_COUNTER_DAYS, CHECKS_BACKLOG_MINUTES)."""

    # Days of Stripe's event list compared with the inbox (Stripe keeps 30).
    webhook_days: int = Field(default=STRIPE_EVENT_RETENTION_DAYS, ge=1, le=STRIPE_EVENT_RETENTION_DAYS)
    # Event types the webhook endpoint receives (Stripe's `type` filter, `*` wildcards); empty:
    # every type. Events of types the endpoint never subscribed to are not gaps.
    webhook_types: list[str] = Field(default_factory=list, max_length=20)
    # Stripe events, subscriptions and usage younger than this are not compared yet (a webhook
    # or the usage sync may still be on its way); unset: CHECKS_BACKLOG_MINUTES.
    grace_minutes: int | None = Field(default=None, ge=0, le=10080)
    stale_counter_days: int | None = Field(default=None, ge=1, le=400)
    backlog_minutes: int | None = Field(default=None, ge=1, le=10080)
    sample_size: int = Field(default=DEFAULT_SAMPLE_SIZE, ge=1, le=MAX_SAMPLE_SIZE)
    # Items per Stripe list request (100: Stripe's largest page).
    page_size: int = Field(default=STRIPE_MAX_PAGE_SIZE, ge=1, le=STRIPE_MAX_PAGE_SIZE)


class CheckRequest(DailyChecksInput):
    """What every check activity gets: the run's input, the one reference time of the run and
    its id (the key of a check's scratch rows)."""

    now: datetime
    run_id: str


class CheckItem(BaseModel):
    """One thing a check found: what (`key`: an id, `day type`, `customer meter period`) and
    what is wrong with it."""

    key: str
    detail: str


class CheckResult(BaseModel):
    check: CheckName
    passed: bool
    summary: str
    findings: int = 0  # how many things are wrong (0 when it passed)
    figures: dict[str, float] = Field(default_factory=dict)  # counts and thresholds behind it
    items: list[CheckItem] = Field(default_factory=list)  # bounded by sample_size
    error: str | None = None  # the check could not run (it then fails)


class RecordChecksInput(BaseModel):
    run_id: str
    workflow_run_id: str
    started_at: datetime
    finished_at: datetime
    results: list[CheckResult]


class DailyChecksProgress(BaseModel):
    phase: str = "starting"
    done: list[CheckName] = Field(default_factory=list)
    total: int = len(CheckName)


class DailyChecksResult(BaseModel):
    run_id: str
    started_at: datetime
    finished_at: datetime
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckName]:
        return [c.check for c in self.checks if not c.passed]

    def ui_outcome(self) -> str:
        """`BillingOutcome` of the run: a failed check needs a human (the checks only read)."""
        return "clean" if self.passed else "needs_attention"
