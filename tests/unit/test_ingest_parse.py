"""Parsing of ingest files (billing/ingest.py read_file / UsageEvent). No database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billing.ingest import IngestReport, UnknownCustomers, UsageEvent, read_file


def parse(path: Path) -> tuple[list[UsageEvent], IngestReport]:
    report = IngestReport()
    return list(read_file(path, report)), report


def jsonl(tmp_path: Path, lines: list[str], name: str = "usage.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def ev(i: int, **over) -> str:
    rec = {"request_id": f"r{i}", "customer_id": "c1", "meter": "api_requests", "quantity": 3,
           "occurred_at": "2026-11-01T12:00:00Z"}
    rec.update(over)
    return json.dumps(rec)


def test_jsonl_parses_and_normalises_to_utc(tmp_path):
    p = jsonl(tmp_path, [ev(1), "", "   ", ev(2, occurred_at="2026-11-01T14:00:00+02:00", quantity="2.5")])
    events, report = parse(p)
    assert report.ok and report.invalid == []
    assert [e.request_id for e in events] == ["r1", "r2"]
    assert events[0].quantity == Decimal(3)
    assert events[1].quantity == Decimal("2.5")
    assert events[1].occurred_at == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert events[1].occurred_at.utcoffset().total_seconds() == 0


def test_json_float_quantity_keeps_its_decimal_text(tmp_path):
    events, report = parse(jsonl(tmp_path, ['{"request_id": "r", "customer_id": "c", "meter": "m", '
                                            '"quantity": 0.1, "occurred_at": "2026-11-01T00:00:00Z"}']))
    assert report.ok
    assert events[0].quantity == Decimal("0.1")


def test_naive_timestamp_is_rejected_with_its_line_number(tmp_path):
    p = jsonl(tmp_path, [ev(1), ev(2, occurred_at="2026-11-01T12:00:00"), ev(3)])
    events, report = parse(p)
    assert [e.request_id for e in events] == ["r1", "r3"]
    assert not report.ok
    assert len(report.invalid) == 1
    assert report.invalid[0].startswith("line 2: occurred_at:")
    assert "timezone" in report.invalid[0]


def test_bad_jsonl_lines_are_reported_with_line_numbers(tmp_path):
    p = jsonl(tmp_path, [
        ev(1),
        "{not json",
        "",  # blank lines still count for numbering
        ev(4, quantity="NaN"),
        ev(5, quantity="lots"),
        json.dumps({"request_id": "r6", "customer_id": "c1"}),
        ev(7, request_id=""),
        ev(8, quantity="Infinity"),
        "[1, 2]",
        ev(10),
    ])
    events, report = parse(p)
    assert [e.request_id for e in events] == ["r1", "r10"]
    lines = {int(x.split(":")[0].removeprefix("line ")): x for x in report.invalid}
    assert sorted(lines) == [2, 4, 5, 6, 7, 8, 9]
    assert "finite" in lines[4]
    assert "quantity" in lines[5]
    assert "meter" in lines[6] and "occurred_at" in lines[6] and "quantity" in lines[6]
    assert "request_id" in lines[7]
    assert "finite" in lines[8]


def test_csv_parses_with_header(tmp_path):
    p = tmp_path / "usage.csv"
    p.write_text(
        "request_id,customer_id,meter,quantity,occurred_at,extra\n"
        "r1,c1,api_requests,5,2026-11-01T00:00:00Z,x\n"
        "r2,c2,storage,0.25,2026-11-01T23:59:59-01:00,y\n"
    )
    events, report = parse(p)
    assert report.ok
    assert [(e.request_id, e.customer_id, e.meter, e.quantity) for e in events] == [
        ("r1", "c1", "api_requests", Decimal(5)), ("r2", "c2", "storage", Decimal("0.25"))]
    assert events[1].occurred_at == datetime(2026, 11, 2, 0, 59, 59, tzinfo=UTC)


def test_csv_bad_rows_report_file_line_numbers(tmp_path):
    p = tmp_path / "usage.csv"
    p.write_text(
        "request_id,customer_id,meter,quantity,occurred_at\n"  # line 1
        "r1,c1,m,5,2026-11-01T00:00:00Z\n"  # line 2
        "r2,c1,m,5,2026-11-01 00:00:00\n"  # line 3: naive
        "r3,c1,m,five,2026-11-01T00:00:00Z\n"  # line 4
        "r4,c1,m,5,yesterday\n"  # line 5
        "r5,c1,m,5,2026-11-01T00:00:00Z\n"  # line 6
    )
    events, report = parse(p)
    assert [e.request_id for e in events] == ["r1", "r5"]
    assert [x.split(":")[0] for x in report.invalid] == ["line 3", "line 4", "line 5"]
    assert "timezone" in report.invalid[0]


def test_csv_row_with_more_fields_than_the_header_is_invalid(tmp_path):
    p = tmp_path / "usage.csv"
    p.write_text(
        "request_id,customer_id,meter,quantity,occurred_at\n"
        "r1,c1,m,5,2026-11-01T00:00:00Z\n"
        "r2,c1,m,5,2026-11-01T00:00:00Z,surprise\n"  # line 3: a shifted column
    )
    events, report = parse(p)
    assert [e.request_id for e in events] == ["r1"]
    assert report.invalid == ["line 3: more fields than the header has"]


def test_csv_missing_columns_is_an_error(tmp_path):
    p = tmp_path / "usage.csv"
    p.write_text("request_id,customer_id,quantity\nr1,c1,5\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) meter, occurred_at"):
        parse(p)


def test_unknown_format_is_an_error(tmp_path):
    p = tmp_path / "usage.xml"
    p.write_text("<usage/>")
    with pytest.raises(ValueError, match="unknown format"):
        parse(p)


def test_model_rejects_naive_datetime_directly():
    with pytest.raises(ValueError, match="timezone"):
        UsageEvent(request_id="r", customer_id="c", meter="m", quantity=Decimal(1),
                   occurred_at=datetime(2026, 11, 1, 12))


def test_unknown_customers_message_is_precise_and_bounded():
    assert str(UnknownCustomers(["ghost", "spook"])) == "unknown customer(s): ghost, spook"
    many = UnknownCustomers([f"c{i}" for i in range(25)])
    assert str(many).endswith("c19 ...")
    assert many.ids[-1] == "c24"


def test_quantities_and_times_outside_the_contract_are_refused_with_their_line(tmp_path):
    """The bounds of README "Ingestion contract" (and of the CHECK constraints of migration
    0009): a finite quantity in [0, 1e15), a time from 2000-01-01 to a day from now."""
    p = jsonl(tmp_path, [
        ev(1, quantity="1e100000"),  # finite for Decimal, absurd for billing
        '{"request_id": "r2", "customer_id": "c1", "meter": "m", "quantity": 1e100000, '
        '"occurred_at": "2026-11-01T00:00:00Z"}',  # a JSON number that large is a float infinity
        ev(3, quantity="-1"),
        ev(4, quantity="1e15"),
        ev(5, quantity="999999999999999.999999"),  # just below the bound: accepted
        ev(6, quantity="0"),
        ev(7, occurred_at="1999-12-31T23:59:59Z"),
        ev(8, occurred_at="2999-01-01T00:00:00Z"),
        ev(9, quantity="-Infinity"),
    ])
    events, report = parse(p)
    assert [e.request_id for e in events] == ["r5", "r6"]
    lines = {int(x.split(":")[0].removeprefix("line ")): x for x in report.invalid}
    assert sorted(lines) == [1, 2, 3, 4, 7, 8, 9]
    assert all("\n" not in x for x in report.invalid)
    assert "quantity must be below 1E+15" in lines[1] and "quantity must be below 1E+15" in lines[4]
    assert "finite" in lines[2] and "finite" in lines[9]
    assert "must not be negative" in lines[3]
    assert "occurred_at 1999-12-31T23:59:59+00:00 is before 2000-01-01" in lines[7]
    assert "more than a day in the future" in lines[8]


def test_csv_quantity_beyond_the_bound_is_refused(tmp_path):
    p = tmp_path / "usage.csv"
    p.write_text("request_id,customer_id,meter,quantity,occurred_at\n"
                 "r1,c1,m,1e100000,2026-11-01T00:00:00Z\n"
                 "r2,c1,m,1e74,2026-11-01T00:00:00Z\n"
                 "r3,c1,m,7,2026-11-01T00:00:00Z\n")
    events, report = parse(p)
    assert [e.request_id for e in events] == ["r3"]
    assert [x.split(":")[0] for x in report.invalid] == ["line 2", "line 3"]
