"""The incident report's parts: what it reads from the durable records (plain rows as typed
values) and what it says (the report). Everything a finance reader sees is here."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field

# A usage value as stored: rows from before the ledger's constraints can hold NaN or Infinity
# (reconciliation reports them as invalid_usage); the report lists them, it never refuses them.
Quantity = Annotated[Decimal, Field(allow_inf_nan=True)]

# --------------------------------------------------------------------------------- read


class RunRow(BaseModel):
    """A usage reconciliation run (billing.reconciliation_runs)."""

    run_id: str
    mode: str
    status: str
    observe_only: bool
    window_start: date
    window_end: date
    customers_filter: list[str] = Field(default_factory=list)
    meters_filter: list[str] = Field(default_factory=list)
    # A read-back slice's customer range (byte order = Python's str order, COLLATE "C" in SQL).
    customers_after: str | None = None
    customers_through: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def successful(self) -> bool:
        """The rule of checks.store.SUCCESSFUL_RUN: completed, healing mode, not observe-only."""
        return (self.status == "completed" and self.mode in ("apply", "plan") and not self.observe_only
                and self.finished_at is not None)

    def covers(self, customer_id: str, meter: str, day: date) -> bool:
        return (self.window_start <= day <= self.window_end
                and (not self.customers_filter or customer_id in self.customers_filter)
                and (self.customers_after is None or customer_id > self.customers_after)
                and (self.customers_through is None or customer_id <= self.customers_through)
                and (not self.meters_filter or meter in self.meters_filter))


class DiscrepancyRow(BaseModel):
    """A row of billing.discrepancies with its run's start."""

    run_id: str
    run_started_at: datetime
    discrepancy_key: str
    kind: str
    status: str
    customer_id: str
    meter: str
    usage_day: date | None = None
    period_start: date | None = None
    ledger_value: Quantity | None = None
    counter_value: Quantity | None = None
    stripe_value: Quantity | None = None
    diff: Quantity | None = None
    action: str | None = None
    detail: str | None = None
    created_at: datetime


class UnitPrice(BaseModel):
    """A metered per-unit price from the subscription mirror: minor units per unit of usage."""

    unit_amount_decimal: Decimal
    currency: str
    price_id: str


class PushRow(BaseModel):
    identifier: str
    customer_id: str
    meter: str
    usage_day: date
    value: Decimal
    kind: str
    status: str
    replaces: str | None = None
    planned_at: datetime
    audited: bool  # its usage.push_meter_event audit row exists


class AuditRow(BaseModel):
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    customer_id: str | None = None
    reason: str | None = None
    workflow_id: str | None = None


class EventRow(BaseModel):
    event_id: str
    type: str
    created: datetime
    source: str
    status: str
    attempts: int
    deliveries: int
    processed_at: datetime | None = None


class IncidentData(BaseModel):
    """Everything the report is built from (incidents/queries.py reads it)."""

    since: datetime
    until: datetime
    last_success_before: datetime | None = None
    runs: list[RunRow] = Field(default_factory=list)  # started before `until`, finished after `since` or not
    discrepancies: list[DiscrepancyRow] = Field(default_factory=list)
    prices: dict[str, UnitPrice] = Field(default_factory=dict)  # by price_key(customer, meter)
    pushes: list[PushRow] = Field(default_factory=list)
    audit: list[AuditRow] = Field(default_factory=list)
    events: list[EventRow] = Field(default_factory=list)


def price_key(customer_id: str, meter: str) -> str:
    return f"{customer_id}|{meter}"


# --------------------------------------------------------------------------------- report


class Outcome(StrEnum):
    """How a discrepancy ended (as of the report's `until`)."""

    CORRECTED = "corrected"  # a run applied its correction (or found it applied already)
    RESOLVED = "resolved"  # a later successful run covered the key and found nothing to fix
    PENDING = "pending"  # corrections sent, not yet seen in Stripe's summaries
    AWAITING_APPROVAL = "awaiting_approval"  # held or proposed, neither approved nor rejected
    REJECTED = "rejected"  # its plan was rejected
    FAILED = "failed"  # the correction failed; a later run retries it
    NEEDS_INVOICE_ADJUSTMENT = "needs_invoice_adjustment"  # outside Stripe's 35-day window
    OPEN = "open"  # found (dry-run, paused, stale plan) and not corrected since


class Gap(BaseModel):
    """A window without a successful reconciliation longer than the report's `max_gap`."""

    start: datetime  # the last success before it (or the report's `since` when none is known)
    end: datetime  # the next success (or the report's `until`)
    ongoing: bool  # no success yet by `until`
    runs_failed: int = 0  # runs that started in it and did not succeed
    last_error: str | None = None

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


class DiscrepancyLine(BaseModel):
    key: str  # kind|customer|meter|day-or-period, as in billing.discrepancies
    kind: str
    customer_id: str
    meter: str
    day: date | None = None  # the usage day (Stripe keys) or the period start (counters)
    first_found: datetime
    found_by: str  # the first run that found it
    runs: int  # how many runs recorded it
    ledger: Quantity | None = None
    other: Quantity | None = None  # Stripe's value, or the counter's
    diff: Quantity | None = None  # as first found
    outcome: Outcome
    settled_by: str | None = None  # the run whose record decided the outcome
    amount_minor: int | None = None  # |diff| priced; blank when no price is known
    currency: str | None = None


class PushTotals(BaseModel):
    count: int = 0
    value: Decimal = Decimal(0)


class Corrections(BaseModel):
    """Meter events we planned in the window, by status (applied: sent or confirmed; open:
    planned and not sent yet; failed without a replacement), and the other corrective writes
    by audit action."""

    applied: PushTotals = Field(default_factory=PushTotals)
    cancelled: PushTotals = Field(default_factory=PushTotals)
    open: PushTotals = Field(default_factory=PushTotals)
    failed_unreplaced: PushTotals = Field(default_factory=PushTotals)
    by_meter: dict[str, PushTotals] = Field(default_factory=dict)  # applied, per meter
    unaudited: list[str] = Field(default_factory=list)  # pushes without their audit row (never expected)
    audit_actions: dict[str, int] = Field(default_factory=dict)  # every audit row of the window by action


class EventsSummary(BaseModel):
    missed: int = 0  # never delivered: stored by a replay
    missed_handled: int = 0  # of those, processed (or ignored: a type no handler needs)
    redelivered_handled: int = 0  # delivered, failed, then handled (a retry or a replay)
    unprocessed: int = 0  # still received or failed at `until`
    missed_by_day_type: dict[str, int] = Field(default_factory=dict)  # "YYYY-MM-DD type" -> missed
    missed_ids: list[str] = Field(default_factory=list)


class Totals(BaseModel):
    gaps: int = 0
    gap_seconds: float = 0.0
    discrepancies: int = 0
    by_outcome: dict[str, int] = Field(default_factory=dict)
    quantity_by_meter: dict[str, Decimal] = Field(default_factory=dict)  # sum |diff| of Stripe keys
    amount_minor_by_currency: dict[str, int] = Field(default_factory=dict)
    unpriced: int = 0  # Stripe-side discrepancies without a known price
    pushes_applied: int = 0
    pushes_applied_value: Decimal = Decimal(0)
    audit_rows: int = 0
    manual_adjustments: int = 0
    events_missed: int = 0


class IncidentReport(BaseModel):
    since: datetime
    until: datetime
    max_gap_seconds: float
    totals: Totals
    gaps: list[Gap]
    discrepancies: list[DiscrepancyLine]
    corrections: Corrections
    manual_adjustments: list[AuditRow]
    events: EventsSummary
