"""Billing meters, meter events, adjustments and event summaries."""

from __future__ import annotations

import hashlib
import pickle
import random
import re
import secrets
import uuid
from array import array
from bisect import bisect_left
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from .errors import StripeError, invalid, missing, no_such, unknown_param
from .state import DAY, RequestContext, new_id, paginate, to_int

if TYPE_CHECKING:
    from .state import Store

TIMESTAMP_PAST_LIMIT = 35 * DAY
TIMESTAMP_FUTURE_LIMIT = 5 * 60
CANCEL_WINDOW = DAY
MAX_IDENTIFIER = 100
_NUMBER_RE = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)$")
WINDOW_SECONDS = {"hour": 3600, "day": DAY}
# Meter events are saved in blocks of this many records; a full block is encoded once and its
# bytes are reused by later saves until an event in it is cancelled (see ``encoded_blocks``).
SAVE_BLOCK = 1 << 16
_ID_BITS = random.Random(secrets.randbits(64))


class MeterEventRecord:
    """One accepted meter event (compact: 10^6 of these must fit comfortably)."""

    __slots__ = (
        "seq",
        "identifier",
        "event_name",
        "customer",
        "value_str",
        "value",
        "timestamp",
        "created",
        "cancelled",
        "counted",
        "keys",
        "extra",
    )

    def __init__(
        self,
        seq,
        identifier,
        event_name,
        customer,
        value_str,
        value,
        timestamp,
        created,
        counted,
        keys,
        extra,
    ):
        self.seq = seq
        self.identifier = identifier
        self.event_name = event_name
        self.customer = customer
        self.value_str = value_str
        self.value = value
        self.timestamp = timestamp
        self.created = created
        self.cancelled = False
        self.counted = counted
        self.keys = keys  # (customer payload key, value payload key)
        self.extra = extra

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if self.extra:
            p.update(self.extra)
        p[self.keys[0]] = self.customer
        if self.value_str is not None:
            p[self.keys[1]] = self.value_str
        return p

    def admin_dict(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "event_name": self.event_name,
            "payload": self.payload(),
            "timestamp": self.timestamp,
            "created": self.created,
            "cancelled": self.cancelled,
        }


class _Series:
    """Events of one (event_name, customer), kept sortable by (timestamp, seq)."""

    __slots__ = ("records", "stamps", "dirty")

    def __init__(self) -> None:
        self.records: list[MeterEventRecord] = []
        self.stamps: list[int] = []
        self.dirty = False

    def add(self, rec: MeterEventRecord) -> None:
        if self.stamps and rec.timestamp < self.stamps[-1]:
            self.dirty = True
        self.records.append(rec)
        self.stamps.append(rec.timestamp)

    def sorted(self) -> tuple[list[MeterEventRecord], list[int]]:
        if self.dirty:
            self.records.sort(key=lambda r: (r.timestamp, r.seq))
            self.stamps = [r.timestamp for r in self.records]
            self.dirty = False
        return self.records, self.stamps


class MeterStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clear()

    def clear(self) -> None:
        self.by_event_name: dict[str, dict[str, Any]] = {}
        self.all: list[MeterEventRecord] = []
        self.by_identifier: dict[str, MeterEventRecord] = {}
        self.series: dict[tuple[str, str], _Series] = {}
        self.by_name_list: dict[str, list[MeterEventRecord]] = {}
        self.by_customer_list: dict[str, list[MeterEventRecord]] = {}
        self._block_cache: dict[int, bytes] = {}

    # -- persistence (``stripe_emulator.persist``) ---------------------------------------
    def encoded_blocks(self) -> list[bytes]:
        """Every record as pickled column blocks of ``SAVE_BLOCK`` records (builtins only)."""
        blocks: list[bytes] = []
        n = len(self.all)
        for b, lo in enumerate(range(0, n, SAVE_BLOCK)):
            hi = min(n, lo + SAVE_BLOCK)
            cached = self._block_cache.get(b)
            if cached is None:
                cached = pickle.dumps(_encode_records(self.all[lo:hi]), protocol=5)
                if hi - lo == SAVE_BLOCK:
                    self._block_cache[b] = cached
            blocks.append(cached)
        return blocks

    def restore_blocks(self, blocks: list[dict[str, Any]]) -> None:
        """Rebuild records and every index from decoded blocks (after ``clear``)."""
        all_ = self.all
        by_identifier = self.by_identifier
        grouped: dict[tuple[str, str], list[MeterEventRecord]] = {}
        by_name = self.by_name_list
        by_customer = self.by_customer_list
        for cols in blocks:
            text = cols["ident"]
            lengths = array("I")
            lengths.frombytes(cols["ident_len"])
            idents = []
            pos = 0
            for n in lengths:
                idents.append(text[pos : pos + n])
                pos += n
            columns = [
                _decode_table(cols[k]) for k in ("name", "customer", "value_str", "keys")
            ]
            values, stamps, created = array("d"), array("q"), array("q")
            values.frombytes(cols["value"])
            stamps.frombytes(cols["timestamp"])
            created.frombytes(cols["created"])
            extra = cols["extra"]
            base = len(all_)
            Rec = MeterEventRecord
            for i, (ident, name, customer, vs, keys, v, ts, cr, fl) in enumerate(
                zip(idents, *columns, values, stamps, created, cols["flags"], strict=True)
            ):
                rec = Rec(base + i, ident, name, customer, vs, v, ts, cr, fl & 2 == 2, keys,
                          extra.get(i) if extra else None)  # fmt: skip
                if fl & 1:
                    rec.cancelled = True
                all_.append(rec)
                by_identifier[ident] = rec
                key = (name, customer)
                lst = grouped.get(key)
                if lst is None:
                    lst = grouped[key] = []
                    by_customer.setdefault(customer, [])
                    by_name.setdefault(name, [])
                lst.append(rec)
                by_name[name].append(rec)
                by_customer[customer].append(rec)
        for key, recs in grouped.items():
            series = self.series[key] = _Series()
            series.records = recs
            series.stamps = [r.timestamp for r in recs]
            series.dirty = True  # sorted on first use (timsort: linear when already in order)

    # -- meters ------------------------------------------------------------------
    def create_meter(self, ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
        for req in ("display_name", "event_name"):
            if not p.get(req):
                raise missing(req)
        agg = p.get("default_aggregation")
        if not isinstance(agg, dict) or not agg.get("formula"):
            raise missing("default_aggregation[formula]")
        if agg["formula"] not in ("sum", "count", "last"):
            raise invalid(
                "Invalid default_aggregation[formula]: must be one of sum, count, or last",
                "default_aggregation[formula]",
                "parameter_invalid_string",
            )
        event_name = p["event_name"]
        if len(event_name) > 100:
            raise invalid("event_name must be at most 100 characters", "event_name")
        if event_name in self.by_event_name:
            raise StripeError(
                400,
                f"A meter with event_name '{event_name}' already exists.",
                param="event_name",
                code="resource_already_exists",
            )
        cm = p.get("customer_mapping") or {}
        if cm and cm.get("type", "by_id") != "by_id":
            raise invalid("customer_mapping[type] must be by_id", "customer_mapping[type]")
        if cm and not cm.get("event_payload_key"):
            raise missing("customer_mapping[event_payload_key]")
        vs = p.get("value_settings") or {}
        etw = p.get("event_time_window") or None
        if etw not in (None, "hour", "day"):
            raise invalid("event_time_window must be one of hour or day", "event_time_window")
        now = self.store.now()
        meter = {
            "id": new_id("mtr_test_", 32),
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": cm.get("event_payload_key", "stripe_customer_id"),
                "type": "by_id",
            },
            "default_aggregation": {"formula": agg["formula"]},
            "display_name": p["display_name"],
            "event_name": event_name,
            "event_time_window": etw,
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": vs.get("event_payload_key", "value")},
        }
        self.store.col("billing.meter").add(meter)
        self.by_event_name[event_name] = meter
        self.store.emit("billing.meter.created", meter, ctx)
        return meter

    def get_meter(self, meter_id: str) -> dict[str, Any]:
        return self.store.col("billing.meter").get(meter_id)

    def update_meter(self, ctx: RequestContext, p: dict[str, Any], id: str) -> dict[str, Any]:
        meter = self.get_meter(id)
        for k in p:
            if k not in ("display_name", "expand"):
                raise unknown_param(k)
        if "display_name" in p and p["display_name"] != meter["display_name"]:
            prev = {"display_name": meter["display_name"]}
            meter["display_name"] = p["display_name"]
            meter["updated"] = self.store.now()
            self.store.emit("billing.meter.updated", meter, ctx, prev)
        return meter

    def set_status(self, ctx: RequestContext, meter_id: str, active: bool) -> dict[str, Any]:
        meter = self.get_meter(meter_id)
        want = "active" if active else "inactive"
        if meter["status"] == want:
            raise StripeError(400, f"Meter {meter_id} is already {want}.", param=None)
        prev = {"status": meter["status"], "status_transitions": dict(meter["status_transitions"])}
        now = self.store.now()
        meter["status"] = want
        meter["status_transitions"] = {"deactivated_at": None if active else now}
        meter["updated"] = now
        self.store.emit(
            "billing.meter.reactivated" if active else "billing.meter.deactivated", meter, ctx, prev
        )
        return meter

    def list_meters(self, p: dict[str, Any]) -> dict[str, Any]:
        status = p.get("status")
        if status not in (None, "active", "inactive"):
            raise invalid("status must be one of active or inactive", "status")
        items = self.store.col("billing.meter").newest_first(
            None if status is None else (lambda m: m["status"] == status)
        )
        return paginate(items, p, "/v1/billing/meters", "billing.meter")

    # -- meter events ----------------------------------------------------------------
    def create_event(self, ctx: RequestContext | None, p: dict[str, Any]) -> dict[str, Any]:
        event_name = p.get("event_name")
        if not event_name:
            raise missing("event_name")
        payload = p.get("payload")
        if not isinstance(payload, dict) or not payload:
            raise missing("payload")
        now = self.store.now()
        ts_raw = p.get("timestamp")
        timestamp = now if ts_raw in (None, "") else to_int(ts_raw, "timestamp")
        if timestamp < now - TIMESTAMP_PAST_LIMIT:
            raise invalid(
                "The event timestamp cannot be more than 35 days in past. "
                f"Received timestamp {timestamp}; provide a timestamp within the last 35 days.",
                "timestamp",
                "timestamp_too_far_in_past",
            )
        if timestamp > now + TIMESTAMP_FUTURE_LIMIT:
            raise invalid(
                "The event timestamp cannot be more than 5 minutes in the future. "
                f"Received timestamp {timestamp}.",
                "timestamp",
                "timestamp_too_far_in_future",
            )
        identifier = p.get("identifier") or None
        if identifier is not None and len(identifier) > MAX_IDENTIFIER:
            raise invalid(
                f"identifier must be at most {MAX_IDENTIFIER} characters.",
                "identifier",
                "parameter_invalid_string",
            )
        meter = self.by_event_name.get(event_name)
        if meter is None or meter["status"] != "active":
            raise StripeError(
                400,
                f"No active meter found for event name {event_name}.",
                param="event_name",
                code="resource_missing",
            )
        cust_key = meter["customer_mapping"]["event_payload_key"]
        val_key = meter["value_settings"]["event_payload_key"]
        customer = payload.get(cust_key)
        if not customer or not isinstance(customer, str):
            raise invalid(
                f"Missing required payload key: {cust_key}.",
                f"payload[{cust_key}]",
                "parameter_missing",
            )
        value_str = payload.get(val_key)
        formula = meter["default_aggregation"]["formula"]
        if value_str is None:
            if formula != "count":
                raise invalid(
                    f"Missing required payload key: {val_key}.",
                    f"payload[{val_key}]",
                    "parameter_missing",
                )
            value = 1.0
        else:
            value = self._parse_value(value_str, val_key)
        if identifier is not None:
            prior = self.by_identifier.get(identifier)
            if (
                prior is not None
                and prior.created > now - self.store.config.identifier_dedupe_seconds
            ):
                raise StripeError(
                    400,
                    f"An event already exists with identifier {identifier}.",
                    param="identifier",
                    code="resource_already_exists",
                    headers={"Stripe-Should-Retry": "false"},
                )
        else:
            identifier = str(uuid.UUID(int=_ID_BITS.getrandbits(128), version=4))
        extra = {k: v for k, v in payload.items() if k not in (cust_key, val_key)} or None
        counted = customer in self.store.col("customer").objects
        rec = self._add(
            identifier,
            event_name,
            customer,
            value_str,
            value,
            timestamp,
            now,
            counted,
            (cust_key, val_key),
            extra,
        )
        if not counted:
            self.store.emit(
                "v1.billing.meter.error_report_triggered",
                {
                    "object": "billing.meter_error_report",
                    "meter": meter["id"],
                    "reason": {
                        "error_code": "meter_event_customer_not_found",
                        "error_message": f"No customer found for {cust_key} {customer}.",
                    },
                    "event_identifier": identifier,
                    "validation_start": now,
                    "validation_end": now,
                },
                ctx,
                explicit_only=True,
            )
        return {
            "object": "billing.meter_event",
            "created": rec.created,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": rec.payload(),
            "timestamp": timestamp,
        }

    @staticmethod
    def _parse_value(value_str: Any, val_key: str) -> float:
        if not isinstance(value_str, str) or not _NUMBER_RE.match(value_str.strip()):
            raise invalid(
                f"Invalid value for payload[{val_key}]: must be a whole number or a decimal "
                f"number represented as a string. Received: {value_str!r}",
                f"payload[{val_key}]",
                "parameter_invalid_string",
            )
        try:
            return float(Decimal(value_str.strip()))
        except InvalidOperation:  # pragma: no cover - regex guards this
            raise invalid(f"Invalid value for payload[{val_key}]", f"payload[{val_key}]") from None

    def _add(
        self,
        identifier,
        event_name,
        customer,
        value_str,
        value,
        timestamp,
        created,
        counted,
        keys,
        extra,
    ) -> MeterEventRecord:
        rec = MeterEventRecord(
            len(self.all),
            identifier,
            event_name,
            customer,
            value_str,
            value,
            timestamp,
            created,
            counted,
            keys,
            extra,
        )
        self.all.append(rec)
        self.by_identifier[identifier] = rec
        key = (event_name, customer)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        series.add(rec)
        self.by_name_list.setdefault(event_name, []).append(rec)
        self.by_customer_list.setdefault(customer, []).append(rec)
        return rec

    def bulk_seed(self, events: list[dict[str, Any]]) -> int:
        """Admin bulk insert: no rate limit, no dedupe/timestamp checks, creates unknown customers."""
        from .resources import bare_customer

        customers = self.store.col("customer")
        now = self.store.now()
        n = 0
        for e in events:
            meter = self.by_event_name.get(e["event_name"])
            if meter is None:
                raise ValueError(f"no meter for event name {e['event_name']}")
            cust_key = meter["customer_mapping"]["event_payload_key"]
            val_key = meter["value_settings"]["event_payload_key"]
            payload = e.get("payload") or {}
            customer = payload.get(cust_key) or e.get("customer")
            if not customer:
                raise ValueError(f"seed event without a customer: {e!r}"[:200])
            customer = str(customer)
            value_str = str(payload.get(val_key, e.get("value", "1")))
            if customer not in customers.objects:
                customers.add(bare_customer(customer, now))
            ident = e.get("identifier") or f"seed_{len(self.all)}_{_ID_BITS.getrandbits(40):010x}"
            self._add(
                ident,
                e["event_name"],
                customer,
                value_str,
                self._parse_value(value_str, val_key),
                int(e.get("timestamp", now)),
                int(e.get("created", now)),
                True,
                (cust_key, val_key),
                None,
            )
            n += 1
        return n

    def list_events_admin(
        self, event_name: str | None, customer: str | None
    ) -> list[MeterEventRecord]:
        if event_name and customer:
            s = self.series.get((event_name, customer))
            if s is None:
                return []
            return sorted(s.records, key=lambda r: r.seq)
        if event_name:
            return self.by_name_list.get(event_name, [])
        if customer:
            return self.by_customer_list.get(customer, [])
        return self.all

    # -- adjustments ----------------------------------------------------------------------
    def create_adjustment(self, ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
        event_name = p.get("event_name")
        if not event_name:
            raise missing("event_name")
        typ = p.get("type", "cancel")
        if typ != "cancel":
            raise invalid("type must be cancel", "type", "parameter_invalid_string")
        cancel = p.get("cancel")
        if not isinstance(cancel, dict) or not cancel.get("identifier"):
            raise missing("cancel[identifier]")
        identifier = cancel["identifier"]
        meter = self.by_event_name.get(event_name)
        if meter is None or meter["status"] != "active":
            raise StripeError(
                400,
                f"No active meter found for event name {event_name}.",
                param="event_name",
                code="resource_missing",
            )
        rec = self.by_identifier.get(identifier)
        if rec is None or rec.event_name != event_name:
            raise StripeError(
                400,
                f"No meter event found with identifier {identifier} for event name {event_name}.",
                param="cancel[identifier]",
                code="resource_missing",
            )
        now = self.store.now()
        if rec.created < now - CANCEL_WINDOW:
            raise StripeError(
                400,
                f"The meter event with identifier {identifier} cannot be cancelled: only events "
                "received within the last 24 hours can be cancelled.",
                param="cancel[identifier]",
                code="meter_event_adjustment_window_expired",
            )
        rec.cancelled = True
        self._block_cache.pop(rec.seq // SAVE_BLOCK, None)  # its saved bytes are stale now
        return {
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "event_name": event_name,
            "livemode": False,
            "status": "pending" if self.store.config.summary_lag_seconds > 0 else "complete",
            "type": "cancel",
        }

    # -- summaries ------------------------------------------------------------------------
    def event_summaries(self, p: dict[str, Any], id: str) -> dict[str, Any]:
        meter = self.get_meter(id)
        customer = p.get("customer")
        if not customer:
            raise missing("customer")
        for req in ("start_time", "end_time"):
            if p.get(req) in (None, ""):
                raise missing(req)
        start = to_int(p["start_time"], "start_time")
        end = to_int(p["end_time"], "end_time")
        for name, v in (("start_time", start), ("end_time", end)):
            if v % 60:
                raise invalid(
                    f"{name} must be aligned to minute boundaries.",
                    name,
                    "parameter_invalid_integer",
                )
        if end <= start:
            raise invalid(
                "end_time must be greater than start_time.", "end_time", "parameter_invalid_integer"
            )
        grouping = p.get("value_grouping_window") or None
        if grouping is not None:
            if grouping not in WINDOW_SECONDS:
                raise invalid(
                    "value_grouping_window must be one of day or hour",
                    "value_grouping_window",
                    "parameter_invalid_string",
                )
            size = WINDOW_SECONDS[grouping]
            label = "hour boundaries" if grouping == "hour" else "day boundaries (00:00 UTC)"
            for name, v in (("start_time", start), ("end_time", end)):
                if v % size:
                    raise invalid(
                        f"{name} must be aligned to {label} when value_grouping_window is {grouping}.",
                        name,
                        "parameter_invalid_integer",
                    )
        else:
            size = end - start
        if customer not in self.store.col("customer").objects:
            raise no_such("customer", customer, param="customer", status=400)
        limit = to_int(p.get("limit", 10), "limit")
        if not 1 <= limit <= 100:
            raise invalid(
                "This value must be greater than or equal to 1 and less than or equal to 100.",
                "limit",
                "parameter_invalid_integer",
            )
        after, before = p.get("starting_after") or None, p.get("ending_before") or None
        if after and before:
            raise invalid(
                "You may only specify one of these parameters: ending_before, starting_after.",
                "ending_before",
            )
        prefix = self._summary_prefix(meter["id"], customer, grouping)
        # windows newest first: window k starts at end - (k+1)*size
        n_windows = (end - start) // size
        first = 0
        if after:
            first = self._window_index(after, prefix, start, end, size, "starting_after") + 1
            last = min(n_windows, first + limit)
        elif before:
            idx = self._window_index(before, prefix, start, end, size, "ending_before")
            first = max(0, idx - limit)
            last = idx
        else:
            last = min(n_windows, limit)
        series = self.series.get((meter["event_name"], customer))
        formula = meter["default_aggregation"]["formula"]
        data = []
        for k in range(first, last):
            ws = end - (k + 1) * size
            we = ws + size
            data.append(
                {
                    "id": f"{prefix}{ws:010x}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": self._aggregate(series, formula, ws, we),
                    "end_time": we,
                    "livemode": False,
                    "meter": meter["id"],
                    "start_time": ws,
                }
            )
        has_more = first > 0 if before else last < n_windows
        return {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "url": f"/v1/billing/meters/{meter['id']}/event_summaries",
        }

    @staticmethod
    def _summary_prefix(meter_id: str, customer: str, grouping: str | None) -> str:
        h = hashlib.sha1(f"{meter_id}|{customer}|{grouping}".encode()).hexdigest()[:12]
        return f"mtrusg_{h}"

    @staticmethod
    def _window_index(sid: str, prefix: str, start: int, end: int, size: int, param: str) -> int:
        try:
            if not sid.startswith(prefix):
                raise ValueError
            ws = int(sid[len(prefix) :], 16)
            if (end - ws) % size or not start <= ws < end:
                raise ValueError
        except ValueError:
            raise no_such("billing.meter_event_summary", sid, param=param, status=400) from None
        return (end - ws) // size - 1

    def _aggregate(self, series: _Series | None, formula: str, ws: int, we: int) -> float:
        if series is None:
            return 0.0
        records, stamps = series.sorted()
        lo = bisect_left(stamps, ws)
        hi = bisect_left(stamps, we, lo)
        if lo == hi:
            return 0.0
        lag = self.store.config.summary_lag_seconds
        horizon = self.store.clock.now_float() - lag
        total = 0.0
        count = 0
        last = None
        for i in range(lo, hi):
            r = records[i]
            if r.cancelled or not r.counted or (lag and r.created > horizon):
                continue
            total += r.value
            count += 1
            last = r.value
        if formula == "count":
            return float(count)
        if formula == "last":
            return float(last) if last is not None else 0.0
        return float(total)


def _encode_table(values: list[Any]) -> tuple[list[Any], bytes]:
    """Dictionary encoding: (distinct values in first-seen order, uint32 codes)."""
    table: dict[Any, int] = {}
    sd = table.setdefault
    codes = array("I", [sd(v, len(table)) for v in values])
    return list(table), codes.tobytes()


def _decode_table(enc: tuple[list[Any], bytes]) -> list[Any]:
    """The column back, as a list of the (shared) table values."""
    codes = array("I")
    codes.frombytes(enc[1])
    table = enc[0]
    return [table[c] for c in codes]


def _encode_records(recs: list[MeterEventRecord]) -> dict[str, Any]:
    """Columns of ``recs``: only str/bytes/list/dict/tuple/None, so the file needs no classes."""
    ids = [r.identifier for r in recs]
    return {
        "ident": "".join(ids),
        "ident_len": array("I", [len(x) for x in ids]).tobytes(),
        "name": _encode_table([r.event_name for r in recs]),
        "customer": _encode_table([r.customer for r in recs]),
        "value_str": _encode_table([r.value_str for r in recs]),
        "keys": _encode_table([r.keys for r in recs]),
        "value": array("d", [r.value for r in recs]).tobytes(),
        "timestamp": array("q", [r.timestamp for r in recs]).tobytes(),
        "created": array("q", [r.created for r in recs]).tobytes(),
        "flags": bytes([(1 if r.cancelled else 0) | (2 if r.counted else 0) for r in recs]),
        "extra": {i: r.extra for i, r in enumerate(recs) if r.extra},
    }
