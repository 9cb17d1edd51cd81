"""The ingestion contract for applications: usage goes into `billing.usage_events`, idempotent
by `request_id`. A duplicate submission bumps `dedupe_count` and is never stored twice.

A quantity is a finite number in [0, 1e15) and an event happened between 2000-01-01 UTC and a
day from now (billing.policy; the CHECK constraints of migration 0009 say the same). Plain SQL,
for apps that write directly:

    INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (request_id) DO UPDATE
       SET dedupe_count = billing.usage_events.dedupe_count + 1;
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import asyncpg
from pydantic import BaseModel, Field, ValidationError, field_validator

from billing.policy import occurred_at_refusal, quantity_refusal

INGEST_SQL = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], $7::int[])
        AS t(request_id, customer_id, meter, quantity, occurred_at, repeats)
), ins AS (
    INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at, source, dedupe_count)
    SELECT request_id, customer_id, meter, quantity, occurred_at, $6, repeats FROM input
    ON CONFLICT (request_id) DO UPDATE
       SET dedupe_count = billing.usage_events.dedupe_count + 1 + EXCLUDED.dedupe_count
    RETURNING (xmax = 0) AS inserted, dedupe_count
)
SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS duplicates
  FROM ins
"""

BATCH = 5000


class UsageEvent(BaseModel):
    request_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1)
    meter: str = Field(min_length=1)
    quantity: Decimal
    occurred_at: datetime

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("occurred_at needs a timezone (use UTC, e.g. 2026-11-01T12:00:00Z)")
        v = v.astimezone(UTC)
        refusal = occurred_at_refusal(v, datetime.now(UTC))
        if refusal:
            raise ValueError(refusal)
        return v

    @field_validator("quantity")
    @classmethod
    def _bounded(cls, v: Decimal) -> Decimal:
        refusal = quantity_refusal(v)
        if refusal:
            raise ValueError(refusal)
        return v


@dataclass
class IngestReport:
    read: int = 0
    inserted: int = 0
    duplicates: int = 0  # request_id already stored: absorbed, counted in dedupe_count
    invalid: list[str] = field(default_factory=list)  # "line N: reason"

    @property
    def ok(self) -> bool:
        return not self.invalid


class UnknownCustomers(Exception):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"unknown customer(s): {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}")
        self.ids = ids


async def ingest(
    conn: asyncpg.Connection, events: Iterable[UsageEvent], source: str = "api",
    on_batch: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Insert events in batches, each batch in one transaction. Unknown customers refuse the
    whole batch (nothing partial) with a precise error. `on_batch` sees the running report
    after every batch (progress)."""
    report = IngestReport()
    batch: list[UsageEvent] = []
    for ev in events:
        report.read += 1
        batch.append(ev)
        if len(batch) >= BATCH:
            await _flush(conn, batch, source, report)
            batch = []
            if on_batch:
                on_batch(report)
    if batch:
        await _flush(conn, batch, source, report)
        if on_batch:
            on_batch(report)
    return report


async def _flush(conn: asyncpg.Connection, batch: list[UsageEvent], source: str, report: IngestReport) -> None:
    customers = sorted({e.customer_id for e in batch})
    known = {r["customer_id"] for r in await conn.fetch(
        "SELECT customer_id FROM billing.customers WHERE customer_id = ANY($1)", customers)}
    unknown = [c for c in customers if c not in known]
    if unknown:
        raise UnknownCustomers(unknown)
    # Repeats inside one batch are folded first (one statement cannot touch a row twice);
    # the first submission wins, like it does across batches.
    unique: dict[str, UsageEvent] = {}
    repeats: dict[str, int] = {}
    for e in batch:
        if e.request_id in unique:
            repeats[e.request_id] = repeats.get(e.request_id, 0) + 1
        else:
            unique[e.request_id] = e
    events = list(unique.values())
    async with conn.transaction():
        row = await conn.fetchrow(
            INGEST_SQL,
            [e.request_id for e in events], [e.customer_id for e in events], [e.meter for e in events],
            [e.quantity for e in events], [e.occurred_at for e in events], source,
            [repeats.get(e.request_id, 0) for e in events])
    report.inserted += row["inserted"]
    report.duplicates += row["duplicates"] + sum(repeats.values())


def read_file(path: Path, report: IngestReport) -> Iterator[UsageEvent]:
    """JSONL (one object per line) or CSV with a header row; invalid lines are reported."""
    for _, ev in read_lines(path, report):
        yield ev


def read_lines(path: Path, report: IngestReport) -> Iterator[tuple[int, UsageEvent]]:
    """`read_file` with the line number of every valid event."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open() as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield n, UsageEvent.model_validate(json.loads(line))
                except (json.JSONDecodeError, ValidationError) as e:
                    report.invalid.append(f"line {n}: {_reason(e)}")
    elif suffix == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"request_id", "customer_id", "meter", "quantity", "occurred_at"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: CSV header lacks column(s) {', '.join(sorted(missing))}")
            for n, rec in enumerate(reader, 2):
                if None in rec:  # DictReader's bucket for fields beyond the header
                    report.invalid.append(f"line {n}: more fields than the header has")
                    continue
                try:
                    yield n, UsageEvent.model_validate(rec)
                except (ValidationError, InvalidOperation) as e:
                    report.invalid.append(f"line {n}: {_reason(e)}")
    else:
        raise ValueError(f"{path}: unknown format (use .jsonl or .csv)")


def _reason(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
    return str(e)
