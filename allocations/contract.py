"""The duration usage contract for applications (docs/durations.md), in the style of
billing/ingest.py: validated models, the plain SQL an application can run itself, and async
helpers over an asyncpg connection.

The application writes:

    -- a rate per resource class (minor units per second, minute or hour) and its Stripe meter
    INSERT INTO billing.allocation_rates (resource_class, effective_from, rate_minor, unit, meter, meter_unit)
    VALUES ('gpu.a100', '2026-01-01Z', 6, 'minute', 'gpu_minutes', 'minute');
    -- an allocation and every status change, with its time
    INSERT INTO billing.allocations (allocation_id, customer_id, resource_class, status, activated_at,
                                     status_changed_at) VALUES ($1, $2, $3, 'active', $4, $4);
    UPDATE billing.allocations SET status = 'released', released_at = $2, status_changed_at = $2,
                                   updated_at = now() WHERE allocation_id = $1;
    -- a usage record, opened when the allocation starts and closed when it is released
    INSERT INTO billing.duration_usage (usage_id, allocation_id, start_time) VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING;
    UPDATE billing.duration_usage SET end_time = $2, accrued_cost_minor = $3, closed_by = 'app',
                                      updated_at = now() WHERE usage_id = $1 AND end_time IS NULL;
    -- payment sessions (checkouts)
    INSERT INTO billing.payment_sessions (session_id, customer_id, stripe_checkout_session_id,
                                          amount_minor, status) VALUES ($1, $2, $3, $4, 'open');

and bills with `bill_record` (or lets ReconcileAllocations do it): one ledger debit and one usage
event per slice, under deterministic keys, so the app, a retry and the reconciliation never
bill a slice twice. CHECK constraints refuse bad input (end before start, a negative rate, an
unknown status)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, Field, field_validator

from allocations.policy import AllocationRow, PaymentRow, RateRow, UsageRow, rate_for
from allocations.pricing import billable_slices, debit_source, request_id
from allocations.types import AllocationStatus, PaymentStatus, SliceModel, TimeUnit
from billing.ingest import UsageEvent, ingest

USAGE_EVENT_SOURCE = "allocations"


def _aware(v: datetime | None) -> datetime | None:
    if v is not None and v.tzinfo is None:
        raise ValueError("times need a timezone (use UTC, e.g. 2026-11-01T12:00:00Z)")
    return v.astimezone(UTC) if v is not None else None


class Rate(BaseModel):
    resource_class: str = Field(min_length=1)
    effective_from: datetime
    rate_minor: Decimal = Field(ge=0)
    unit: TimeUnit
    meter: str = Field(min_length=1)
    meter_unit: TimeUnit = TimeUnit.MINUTE
    currency: str = "usd"

    @field_validator("effective_from")
    @classmethod
    def _tz(cls, v: datetime) -> datetime:
        return _aware(v) or v

    @field_validator("rate_minor")
    @classmethod
    def _finite(cls, v: Decimal) -> Decimal:
        if not v.is_finite():
            raise ValueError("rate_minor must be a finite number")
        return v


class Allocation(BaseModel):
    allocation_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    resource_class: str = Field(min_length=1)
    activated_at: datetime

    @field_validator("activated_at")
    @classmethod
    def _tz(cls, v: datetime) -> datetime:
        return _aware(v) or v


class PaymentSession(BaseModel):
    session_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    amount_minor: int = Field(gt=0)
    stripe_checkout_session_id: str | None = None
    status: PaymentStatus = PaymentStatus.OPEN
    currency: str = "usd"


async def upsert_rate(conn: asyncpg.Connection, rate: Rate) -> None:
    await conn.execute(
        """
        INSERT INTO billing.allocation_rates (resource_class, effective_from, rate_minor, unit, currency, meter, meter_unit)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (resource_class, effective_from) DO UPDATE
           SET rate_minor = EXCLUDED.rate_minor, unit = EXCLUDED.unit, currency = EXCLUDED.currency,
               meter = EXCLUDED.meter, meter_unit = EXCLUDED.meter_unit
        """, rate.resource_class, rate.effective_from, rate.rate_minor, rate.unit.value, rate.currency, rate.meter,
        rate.meter_unit.value)


async def activate(conn: asyncpg.Connection, a: Allocation, usage_id: str) -> None:
    """A new allocation, active, with its open usage record, in one transaction (idempotent)."""
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO billing.allocations (allocation_id, customer_id, resource_class, status, activated_at,
                                             status_changed_at)
            VALUES ($1, $2, $3, 'active', $4, $4) ON CONFLICT DO NOTHING
            """, a.allocation_id, a.customer_id, a.resource_class, a.activated_at)
        await open_usage(conn, usage_id, a.allocation_id, a.activated_at)


async def set_status(conn: asyncpg.Connection, allocation_id: str, status: AllocationStatus, at: datetime) -> None:
    """A status change and its time (`releasing_at`, `released_at` or `release_failed_at`)."""
    at = _aware(at) or at
    column = {AllocationStatus.RELEASING: "releasing_at", AllocationStatus.RELEASED: "released_at",
              AllocationStatus.RELEASE_FAILED: "release_failed_at"}.get(status)
    extra = f", {column} = $3" if column else ""
    await conn.execute(
        f"UPDATE billing.allocations SET status = $2, status_changed_at = $3, updated_at = now(){extra} "
        "WHERE allocation_id = $1", allocation_id, status.value, at)


async def open_usage(conn: asyncpg.Connection, usage_id: str, allocation_id: str, start_time: datetime,
                     opened_by: str = "app") -> bool:
    """Open a usage record; False when it (or another open record of the allocation) exists."""
    row = await conn.fetchval(
        """
        INSERT INTO billing.duration_usage (usage_id, allocation_id, start_time, opened_by)
        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING usage_id
        """, usage_id, allocation_id, _aware(start_time), opened_by)
    return row is not None


async def close_usage(conn: asyncpg.Connection, usage_id: str, end_time: datetime,
                      accrued_cost_minor: int | None = None, closed_by: str = "app",
                      close_flag: str | None = None) -> bool:
    """Close an open record; False when it was already closed."""
    row = await conn.fetchval(
        """
        UPDATE billing.duration_usage SET end_time = $2, accrued_cost_minor = coalesce($3, accrued_cost_minor),
               closed_by = $4, close_flag = $5, updated_at = now()
         WHERE usage_id = $1 AND end_time IS NULL RETURNING usage_id
        """, usage_id, _aware(end_time), accrued_cost_minor, closed_by, close_flag)
    return row is not None


async def record_payment(conn: asyncpg.Connection, p: PaymentSession) -> None:
    await conn.execute(
        """
        INSERT INTO billing.payment_sessions (session_id, customer_id, stripe_checkout_session_id, amount_minor,
                                              currency, status)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id) DO NOTHING
        """, p.session_id, p.customer_id, p.stripe_checkout_session_id, p.amount_minor, p.currency, p.status.value)


# ---------------------------------------------------------------------------- reading rows


async def load_rates(conn: asyncpg.Connection, classes: list[str]) -> list[RateRow]:
    rows = await conn.fetch(
        "SELECT resource_class, effective_from, rate_minor, unit, meter, meter_unit FROM billing.allocation_rates "
        "WHERE resource_class = ANY($1)", classes)
    return [RateRow(r["resource_class"], r["effective_from"], Decimal(r["rate_minor"]), TimeUnit(r["unit"]),
                    r["meter"], TimeUnit(r["meter_unit"])) for r in rows]


def allocation_row(r: asyncpg.Record) -> AllocationRow:
    return AllocationRow(r["allocation_id"], r["customer_id"], r["resource_class"], AllocationStatus(r["status"]),
                         r["activated_at"], r["released_at"])


def usage_row(r: asyncpg.Record) -> UsageRow:
    return UsageRow(r["usage_id"], r["start_time"], r["end_time"], r["last_billed_at"], r["accrued_cost_minor"])


def payment_row(r: asyncpg.Record) -> PaymentRow:
    return PaymentRow(r["session_id"], r["customer_id"], r["stripe_checkout_session_id"], r["amount_minor"],
                      PaymentStatus(r["status"]), r["ledger_entry_id"])


USAGE_COLUMNS = "usage_id, allocation_id, start_time, end_time, last_billed_at, accrued_cost_minor"


async def load_usage(conn: asyncpg.Connection, allocation_ids: list[str]) -> dict[str, list[UsageRow]]:
    out: dict[str, list[UsageRow]] = {a: [] for a in allocation_ids}
    for r in await conn.fetch(
            f"SELECT {USAGE_COLUMNS} FROM billing.duration_usage WHERE allocation_id = ANY($1) "
            "ORDER BY allocation_id, start_time, usage_id", allocation_ids):
        out[r["allocation_id"]].append(usage_row(r))
    return out


async def load_debits(conn: asyncpg.Connection, usage_ids: list[str]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for r in await conn.fetch(
            "SELECT usage_id, slice_index, amount_minor FROM billing.duration_ledger "
            "WHERE kind = 'debit' AND usage_id = ANY($1)", usage_ids):
        out.setdefault(r["usage_id"], {})[r["slice_index"]] = r["amount_minor"]
    return out


# ---------------------------------------------------------------------------- billing


@dataclass
class Posted:
    debits: int = 0
    amount_minor: int = 0
    events: int = 0
    last_billed_at: datetime | None = None


async def post_slices(
    conn: asyncpg.Connection, *, usage_id: str, customer_id: str, meter: str, slices: list[SliceModel],
    actor: str, reason: str, workflow_id: str | None,
) -> Posted:
    """One ledger debit and one usage event per slice, each under its deterministic key (a slice
    already posted is left alone), then `last_billed_at` / `billed_cost_minor` from the ledger.
    Call inside a transaction holding the record's lock (`bill_record` and the reconciliation
    do)."""
    out = Posted()
    if not slices:
        return out
    inserted = await conn.fetch(
        """
        INSERT INTO billing.duration_ledger (customer_id, kind, amount_minor, source, usage_id, slice_index,
                                             slice_start, slice_end, actor, reason, workflow_id)
        SELECT $1, 'debit', a, s, $2, i, ss, se, $3, $4, $5
          FROM unnest($6::bigint[], $7::text[], $8::int[], $9::timestamptz[], $10::timestamptz[]) AS t(a, s, i, ss, se)
        ON CONFLICT DO NOTHING RETURNING slice_index, amount_minor
        """, customer_id, usage_id, actor, reason, workflow_id,
        [s.amount_minor for s in slices], [debit_source(usage_id, s.index) for s in slices],
        [s.index for s in slices], [s.start for s in slices], [s.end for s in slices])
    out.debits = len(inserted)
    out.amount_minor = sum(r["amount_minor"] for r in inserted)
    ids = [request_id(usage_id, s.index) for s in slices]
    have = {r["request_id"] for r in await conn.fetch(
        "SELECT request_id FROM billing.usage_events WHERE request_id = ANY($1)", ids)}
    events = [UsageEvent(request_id=rid, customer_id=customer_id, meter=meter, quantity=s.quantity,
                         occurred_at=s.start) for rid, s in zip(ids, slices, strict=True) if rid not in have]
    if events:
        out.events = (await ingest(conn, events, source=USAGE_EVENT_SOURCE)).inserted
    row = await conn.fetchrow(
        """
        UPDATE billing.duration_usage u SET
               last_billed_at = greatest(u.last_billed_at, l.last_end),
               billed_cost_minor = l.total, updated_at = now()
          FROM (SELECT max(slice_end) AS last_end, coalesce(sum(amount_minor), 0)::bigint AS total
                  FROM billing.duration_ledger WHERE kind = 'debit' AND usage_id = $1) l
         WHERE u.usage_id = $1 RETURNING u.last_billed_at
        """, usage_id)
    out.last_billed_at = row["last_billed_at"] if row else None
    return out


async def bill_record(conn: asyncpg.Connection, usage_id: str, as_of: datetime, actor: str = "app") -> Posted:
    """The application's own billing of one record: every billable slice not posted yet (all
    of a closed record; the complete days of an open one). Same keys as ReconcileAllocations,
    so the two never double-bill. A record without a rate is refused (ValueError)."""
    async with conn.transaction():
        r = await conn.fetchrow(
            f"SELECT {USAGE_COLUMNS}, a.customer_id, a.resource_class FROM billing.duration_usage u "
            "JOIN billing.allocations a USING (allocation_id) WHERE usage_id = $1 FOR UPDATE OF u", usage_id)
        if r is None:
            raise ValueError(f"unknown usage record {usage_id}")
        rate = rate_for(r["resource_class"], r["start_time"], await load_rates(conn, [r["resource_class"]]))
        if rate is None:
            raise ValueError(f"no rate for resource class {r['resource_class']!r} at {r['start_time']}")
        posted = await load_debits(conn, [usage_id])
        slices = [s for s in billable_slices(r["start_time"], r["end_time"], _aware(as_of) or as_of, rate.rate_minor,
                                             rate.unit, rate.meter_unit)
                  if s.index not in posted.get(usage_id, {})]
        return await post_slices(conn, usage_id=usage_id, customer_id=r["customer_id"], meter=rate.meter,
                                 slices=slices, actor=actor, reason="billing", workflow_id=None)
