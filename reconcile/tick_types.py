"""Types of the change-driven usage sync (`UsageTick`, reconcile/tick.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.types import Mode

MAX_TICK_PAGE = 5000


class UsageTickInput(BaseModel):
    mode: Mode = Mode.APPLY  # apply, or dry-run (plan is refused: a tick is small and immediate)
    actor: str = Field(default="schedule:usage-sync", min_length=1)
    page_size: int = Field(default=500, ge=1, le=MAX_TICK_PAGE)  # keys per page
    # A tick stops after this many pages; the keys left are the next tick's (they stay changed).
    max_pages: int = Field(default=100, ge=1, le=10_000)
    settle_seconds: int | None = Field(default=None, ge=0, le=7 * 86400)  # default RECON_SETTLE_SECONDS


class TickCounts(BaseModel):
    """Additive over pages."""

    changed_keys: int = 0  # keys whose ledger changed since they were last synced
    queued_keys: int = 0  # keys an async meter error (or a lost push) named
    settled_keys: int = 0  # keys with pushes done settling, read back once
    pushed: int = 0  # meter events sent (L - P)
    push_failures: int = 0  # refused by Stripe at once (reported on the outbox row)
    confirmed: int = 0  # settled pushes Stripe reflects
    lost: int = 0  # settled pushes Stripe does not reflect: marked failed, pushed again
    needs_full_pass: int = 0  # settled keys Stripe disagrees with beyond our pushes (over-reported)
    counters_repaired: int = 0
    poison_keys: int = 0  # the key holds unusable usage rows: reported, never pushed
    unmapped_keys: int = 0  # no Stripe customer for the customer
    outside_window: int = 0  # changed days older than Stripe's 35-day window
    reports_swept: int = 0  # async error reports the receiver could not finish
    stripe_reads: int = 0
    stripe_writes: int = 0

    def add(self, other: TickCounts) -> TickCounts:
        return TickCounts(**{k: getattr(self, k) + getattr(other, k) for k in TickCounts.model_fields})


class TickPageInput(BaseModel):
    run_id: str
    workflow_run_id: str
    actor: str
    page: int
    page_size: int
    settle_seconds: int
    write: bool  # False: dry-run or paused (observe-only)


class TickPageResult(BaseModel):
    counts: TickCounts
    more: bool  # more changed keys wait
    # Auto-healing was paused when the page began: it wrote nothing (the pause stops a tick's
    # writes within one page, not only at its start).
    paused: bool = False


class UsageTickResult(BaseModel):
    run_id: str
    mode: Mode
    observe_only: bool
    pages: int
    counts: TickCounts
