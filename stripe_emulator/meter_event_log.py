"""Every accepted meter event, compact and indexed: the data behind meter events,
adjustments and event summaries (``resources.meter_*``), and its column encoding for the state
file (``persist``). No HTTP, no Stripe objects: records in, records and aggregates out."""

from __future__ import annotations

import pickle
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

# Meter events are saved in blocks of this many records; a full block is encoded once and its
# bytes are reused by later saves until an event in it is cancelled (see ``encoded_blocks``).
SAVE_BLOCK = 1 << 16


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
        seq=0,
    ):
        self.seq = seq  # position in the log, set by ``MeterEventLog.add``
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


class MeterEventLog:
    """Records in arrival order, by identifier, by (event name, customer) sorted by timestamp,
    by event name and by customer."""

    def __init__(self) -> None:
        self.all: list[MeterEventRecord] = []
        self.by_identifier: dict[str, MeterEventRecord] = {}
        self.series: dict[tuple[str, str], _Series] = {}
        self.by_name_list: dict[str, list[MeterEventRecord]] = {}
        self.by_customer_list: dict[str, list[MeterEventRecord]] = {}
        self._block_cache: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.all)

    def add(self, rec: MeterEventRecord) -> MeterEventRecord:
        rec.seq = len(self.all)
        self.all.append(rec)
        self.by_identifier[rec.identifier] = rec
        key = (rec.event_name, rec.customer)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        series.add(rec)
        self.by_name_list.setdefault(rec.event_name, []).append(rec)
        self.by_customer_list.setdefault(rec.customer, []).append(rec)
        return rec

    def cancel(self, rec: MeterEventRecord) -> None:
        rec.cancelled = True
        self._block_cache.pop(rec.seq // SAVE_BLOCK, None)  # its saved bytes are stale now

    def select(self, event_name: str | None, customer: str | None) -> list[MeterEventRecord]:
        """Events of one event name and/or customer (all without either), in arrival order."""
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

    def aggregate(
        self,
        event_name: str,
        customer: str,
        formula: str,
        start: int,
        end: int,
        received_by: float | None = None,
    ) -> float:
        """``formula`` (sum, count or last) over the counted, not cancelled events with
        ``start <= timestamp < end``; with ``received_by``, only those created by then."""
        series = self.series.get((event_name, customer))
        if series is None:
            return 0.0
        records, stamps = series.sorted()
        lo = bisect_left(stamps, start)
        hi = bisect_left(stamps, end, lo)
        total = 0.0
        count = 0
        last = None
        for i in range(lo, hi):
            r = records[i]
            if (
                r.cancelled
                or not r.counted
                or (received_by is not None and r.created > received_by)
            ):
                continue
            total += r.value
            count += 1
            last = r.value
        if formula == "count":
            return float(count)
        if formula == "last":
            return float(last) if last is not None else 0.0
        return float(total)

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

    def restore_blocks(self, blocks: list[dict[str, Any]], raw: Sequence[bytes] = ()) -> None:
        """Rebuild records and every index from decoded blocks (into an empty log). ``raw`` are
        the blocks' bytes as read: full ones are reused by the next save instead of re-encoded."""
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
            columns = [_decode_table(cols[k]) for k in ("name", "customer", "value_str", "keys")]
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
                rec = Rec(ident, name, customer, vs, v, ts, cr, fl & 2 == 2, keys,
                          extra.get(i) if extra else None, base + i)  # fmt: skip
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
        for i, (data, cols) in enumerate(zip(raw, blocks, strict=False)):
            if len(cols["ident_len"]) // 4 == SAVE_BLOCK:
                self._block_cache[i] = data


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
