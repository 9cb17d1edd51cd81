"""Types of the rolling read-back (`RollingReadBack`, readback/workflow.py)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from common.types import Mode
from reconcile.types import Counts

READBACK_LANE = "readback"  # its lane of the Stripe budget (billing/budget_lane.py)
# A run waits for its slice at most 90% of this: it bounds the run's history (a look every few
# seconds to a minute) and must stay under the schedule's execution_timeout (schedules.py checks).
MAX_EVERY_MINUTES = 180


class ReadBackInput(BaseModel):
    """What the `usage-readback` schedule starts every `every_minutes` (schedules.toml)."""

    # apply; dry-run previews the next slice once (claims nothing, so a dry-run schedule would
    # preview the same slice every tick); plan is refused: slices run unattended.
    mode: Mode = Mode.APPLY
    actor: str = Field(default="schedule:usage-readback", min_length=1, max_length=200)
    # Every (customer, meter) key is read back once per cycle.
    cycle_hours: float = Field(default=24, gt=0, le=24 * 35)
    # The schedule's interval: a slice reads what keeps the cycle on pace until the next one.
    every_minutes: float = Field(default=10, gt=0, le=MAX_EVERY_MINUTES)
    # The read-back's share of the summary endpoint's limit (Stripe's 25/s: 0.25 = 6 reads/s).
    budget_share: Decimal = Field(default=Decimal("0.25"), gt=0, le=1)
    # The days read per key: Stripe takes corrections within 35 days.
    lookback_days: int = Field(default=35, ge=1, le=35)
    page_size: int | None = Field(default=None, ge=1, le=5000)
    # Held over-reporting waits this long for an approval in its slice's ReconcileUsage run (then
    # it is dropped, and found again next cycle); the read-back itself does not wait for it.
    held_approval_timeout_seconds: int = Field(default=6 * 3600, ge=1, le=7 * 86400)

    @field_validator("mode")
    @classmethod
    def _not_plan(cls, v: Mode) -> Mode:
        if v == Mode.PLAN:
            raise ValueError("RollingReadBack supports apply and dry-run, not plan (slices run unattended)")
        return v

    @field_validator("actor")
    @classmethod
    def _actor(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("actor must not be blank")
        return v.strip()


class ClaimInput(BaseModel):
    claimed_by: str  # the read-back run's workflow id: a retried claim returns the same slice
    cycle_seconds: float
    every_seconds: float
    budget_share: Decimal
    # False (dry-run): compute the next slice without claiming it, so the cycle is unchanged.
    record: bool = True


class SliceClaim(BaseModel):
    """The customers (after, through] a slice covers; `through` None = to the last customer."""

    due: bool  # False: the cycle is ahead of its pace (or there are no customers): nothing to read
    cycle: int = 0
    slice: int = 0
    after: str | None = None
    through: str | None = None
    customers: int = 0
    meters: int = 0
    # The cycle stays on pace: the lane's share could read every customer due within the
    # interval. False: the slice read what the share allows, and the cycle runs late.
    on_pace: bool = True
    child_id: str = ""
    cycle_customers: int = 0  # customers when the slice was claimed
    cycle_done_customers: int = 0  # customers before this slice, in this cycle
    # Not due because this many earlier slices' runs still read (MAX_OPEN_SLICES).
    waiting_on_runs: int = 0


class SliceStatus(StrEnum):
    """`readback_slices.status` (its CHECK constraint lists the same values), plus `preview`."""

    CLAIMED = "claimed"  # its read-back run has not recorded how it ended (yet)
    COMPLETED = "completed"
    AWAITING_APPROVAL = "awaiting_approval"  # its run holds over-reporting for a human
    RUNNING = "running"  # its run outlived the read-back's wait (one interval): it goes on alone
    OBSERVE_ONLY = "observe_only"  # auto-healing was paused: read and reported, not corrected
    FAILED = "failed"
    PREVIEW = "preview"  # a dry-run: what the next slice would read; nothing claimed


class FinishSliceInput(BaseModel):
    cycle: int
    slice: int
    status: SliceStatus
    error: str | None = None
    counts: Counts | None = None


class ReadBackResult(BaseModel):
    due: bool
    mode: Mode
    cycle: int = 0
    slice: int = 0
    customers: int = 0
    keys: int = 0  # customers x meters read back
    on_pace: bool = True
    status: SliceStatus = SliceStatus.COMPLETED
    waiting_on_runs: int = 0  # not due: earlier slices' runs still read
    child_id: str | None = None
    counts: Counts | None = None
    error: str | None = None

    def ui_outcome(self) -> str:
        from common.ui import Outcome

        if not self.due:
            return Outcome.COMPLETED
        if self.status == SliceStatus.FAILED:
            return Outcome.NEEDS_ATTENTION
        if self.status == SliceStatus.AWAITING_APPROVAL:
            return Outcome.AWAITING_APPROVAL
        if self.status == SliceStatus.OBSERVE_ONLY:
            return Outcome.OBSERVE_ONLY
        if self.status == SliceStatus.RUNNING:
            return Outcome.COMPLETED
        c = self.counts or Counts()
        if self.mode == Mode.DRY_RUN:
            return Outcome.DRIFT_FOUND if c.drift_count else Outcome.CLEAN
        return Outcome.DRIFT_FIXED if (c.corrections_pushed + c.corrections_cancelled) else Outcome.CLEAN

    def ui_details(self) -> str:
        if not self.due:
            return "Rolling read-back: ahead of its pace, nothing due."
        pace = "on pace" if self.on_pace else "**behind pace** (the budget share cannot read every key due)"
        return (f"Rolling read-back cycle {self.cycle}, slice {self.slice}: {self.customers} customers, "
                f"{self.keys} keys read back ({pace}); run `{self.child_id}`: {self.status}.")
