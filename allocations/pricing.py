"""Duration pricing and billing slices. Pure functions, UTC only, no IO.

A usage record [start, end) is billed in **slices**: the record cut at every UTC midnight. Slice
`i` lies in the UTC day `start.date() + i`; it starts at max(start, that midnight) and ends at
min(end, the next midnight). So slices never overlap, never leave a gap, and each lies inside one
UTC day, hence inside one billing period (calendar months in UTC, billing/periods.py) and inside
one of the usage reconciliation's daily windows.

Rounding rule (docs/durations.md): cost and quantity are rounded **cumulatively**, half up, from
the record's start: cost_until(t) = round_half_up(rate x elapsed(start, t) / unit) in whole minor
units, and slice i costs cost_until(slice end) - cost_until(slice start). The slices of a record
therefore always add up to round_half_up(rate x duration) exactly, whatever the slicing, and each
slice's amount is a deterministic function of the record. The meter quantity is rounded the same
way to QUANTITY_PLACES decimal places. Durations are exact to the microsecond.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from allocations.types import SliceModel, TimeUnit

DAY = timedelta(days=1)
QUANTITY_PLACES = 6
UNIT_SECONDS: dict[TimeUnit, int] = {TimeUnit.SECOND: 1, TimeUnit.MINUTE: 60, TimeUnit.HOUR: 3600}
_MICROS = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(a: datetime, b: datetime) -> int:
    d = b - a
    return (d.days * 86400 + d.seconds) * _MICROS + d.microseconds


def _round_half_up(x: Fraction) -> int:
    # Exact: floor(x + 1/2) for x >= 0 (costs and quantities are never negative).
    return int((x + Fraction(1, 2)) // 1)


def cost_until(rate_minor: Decimal, unit: TimeUnit, start: datetime, t: datetime) -> int:
    """Whole minor units owed from `start` to `t` (cumulative, half up)."""
    elapsed = Fraction(_micros(start, t), _MICROS * UNIT_SECONDS[unit])
    return _round_half_up(Fraction(rate_minor) * elapsed)


def quantity_until(meter_unit: TimeUnit, start: datetime, t: datetime) -> Decimal:
    """Meter units from `start` to `t`, to QUANTITY_PLACES decimals (cumulative, half up)."""
    scale = 10 ** QUANTITY_PLACES
    scaled = _round_half_up(Fraction(_micros(start, t) * scale, _MICROS * UNIT_SECONDS[meter_unit]))
    return (Decimal(scaled) / Decimal(scale)).quantize(Decimal(1).scaleb(-QUANTITY_PLACES), rounding=ROUND_HALF_UP)


def midnight(t: datetime) -> datetime:
    return datetime.combine(t.astimezone(UTC).date(), time.min, tzinfo=UTC)


def slice_bounds(start: datetime, index: int, end: datetime | None) -> tuple[datetime, datetime]:
    """[slice start, slice end) of slice `index` of a record starting at `start`; the last slice
    ends at `end` (None: an open record, whose slices end at midnight)."""
    day0 = midnight(start)
    s = max(start, day0 + index * DAY)
    e = day0 + (index + 1) * DAY
    if end is not None:
        e = min(e, end)
    return s, e


def billable_slices(
    start: datetime, end: datetime | None, as_of: datetime, rate_minor: Decimal, unit: TimeUnit,
    meter_unit: TimeUnit,
) -> list[SliceModel]:
    """Every slice of the record that can be billed at `as_of`: all of a closed record's slices;
    of an open record only the complete ones (ending at or before the last midnight <= as_of).
    Zero-length records have no slice."""
    until = end if end is not None else midnight(as_of)
    out: list[SliceModel] = []
    i = 0
    while True:
        s, e = slice_bounds(start, i, end)
        if e > until or s >= until:
            break
        out.append(SliceModel(
            index=i, start=s, end=e,
            amount_minor=cost_until(rate_minor, unit, start, e) - cost_until(rate_minor, unit, start, s),
            quantity=quantity_until(meter_unit, start, e) - quantity_until(meter_unit, start, s)))
        i += 1
    return out


def request_id(usage_id: str, index: int) -> str:
    """The usage event of slice `index` of a record (billing.usage_events.request_id)."""
    return f"dur:{usage_id}:{index}"


def debit_source(usage_id: str, index: int) -> str:
    """The ledger debit of slice `index` of a record (billing.duration_ledger.source)."""
    return f"debit:{usage_id}:{index}"


def credit_source(session_id: str) -> str:
    return f"credit:{session_id}"


def auto_usage_id(allocation_id: str, start: datetime) -> str:
    """Id of a usage record the tool opens (deterministic: a retry opens the same one)."""
    return f"auto:{allocation_id}:{_micros(EPOCH, start)}"
