"""`billing-recon ingest FILE` as an operator runs it (subprocess, DATABASE_URL set): idempotent by
request_id, and all-or-nothing on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "billing-recon")


def run_ingest(postgres_dsn: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": postgres_dsn, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([CLI, "ingest", str(path)], env=env, capture_output=True, text=True, timeout=120)


def event(rid: str, customer: str = "acme", quantity: str = "3", at: str = "2026-11-01T12:00:00Z",
          meter: str = "api_requests") -> dict:
    return {"request_id": rid, "customer_id": customer, "meter": meter, "quantity": quantity, "occurred_at": at}


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
async def db(clean_db):
    await clean_db.execute(
        "INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('acme', 'cus_a'), ('globex', 'cus_g')")
    return clean_db


async def stored(pool) -> dict[str, tuple[str, Decimal, int]]:
    rows = await pool.fetch("SELECT request_id, customer_id, quantity, dedupe_count FROM billing.usage_events")
    return {r["request_id"]: (r["customer_id"], r["quantity"], r["dedupe_count"]) for r in rows}


async def test_ingest_is_idempotent_by_request_id(db, postgres_dsn, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [event("r1"), event("r2", "globex", "2.5"), event("r3"),
                                               event("r1", quantity="999")])  # a retry inside the file
    res = run_ingest(postgres_dsn, first)
    assert res.returncode == 0, res.stderr
    assert "read 4, inserted 3, duplicates 1" in res.stdout
    assert await stored(db) == {"r1": ("acme", Decimal(3), 1), "r2": ("globex", Decimal("2.5"), 0),
                                "r3": ("acme", Decimal(3), 0)}  # the first submission wins

    # The whole file again, plus one new event: only the new one is stored.
    again = write_jsonl(tmp_path / "b.jsonl", [event("r1"), event("r2", "globex", "2.5"), event("r3"), event("r4")])
    res = run_ingest(postgres_dsn, again)
    assert res.returncode == 0, res.stderr
    assert "read 4, inserted 1, duplicates 3" in res.stdout
    rows = await stored(db)
    assert sorted(rows) == ["r1", "r2", "r3", "r4"]
    assert {k: v[2] for k, v in rows.items()} == {"r1": 2, "r2": 1, "r3": 1, "r4": 0}
    assert await db.fetchval("SELECT sum(dedupe_count) FROM billing.usage_events") == 4
    assert await db.fetchval("SELECT count(*) FROM billing.usage_events") == 4
    assert await db.fetchval("SELECT sum(quantity) FROM billing.usage_events") == Decimal("11.5")
    assert await db.fetchval("SELECT DISTINCT source FROM billing.usage_events") == "cli"


async def test_ingest_csv(db, postgres_dsn, tmp_path):
    p = tmp_path / "u.csv"
    p.write_text("request_id,customer_id,meter,quantity,occurred_at\n"
                 "c1,acme,api_requests,4,2026-11-01T10:00:00+02:00\n"
                 "c2,globex,storage_gb_hours,0.75,2026-11-02T00:00:00Z\n")
    res = run_ingest(postgres_dsn, p)
    assert res.returncode == 0, res.stderr
    assert "inserted 2" in res.stdout
    at = await db.fetchval("SELECT occurred_at FROM billing.usage_events WHERE request_id = 'c1'")
    assert at.isoformat() == "2026-11-01T08:00:00+00:00"


async def test_unknown_customer_writes_nothing(db, postgres_dsn, tmp_path):
    p = write_jsonl(tmp_path / "u.jsonl", [event("r1"), event("r2", "ghost"), event("r3", "phantom")])
    res = run_ingest(postgres_dsn, p)
    assert res.returncode != 0
    assert "unknown customer(s): ghost, phantom" in res.stderr
    assert "nothing was written" in res.stderr
    assert await db.fetchval("SELECT count(*) FROM billing.usage_events") == 0


async def test_invalid_line_writes_nothing_and_names_the_line(db, postgres_dsn, tmp_path):
    p = write_jsonl(tmp_path / "u.jsonl", [
        event("r1"),
        event("r2", at="2026-11-01T12:00:00"),  # naive timestamp
        "{broken",
        event("r4"),
    ])
    res = run_ingest(postgres_dsn, p)
    assert res.returncode != 0
    assert "line 2: occurred_at" in res.stderr and "timezone" in res.stderr
    assert "line 3:" in res.stderr
    assert f"2 invalid line(s) in {p}; nothing was written" in res.stderr.replace("\n", "")
    assert await db.fetchval("SELECT count(*) FROM billing.usage_events") == 0


async def test_csv_missing_column_is_refused(db, postgres_dsn, tmp_path):
    p = tmp_path / "u.csv"
    p.write_text("request_id,customer_id,quantity,occurred_at\nr1,acme,1,2026-11-01T00:00:00Z\n")
    res = run_ingest(postgres_dsn, p)
    assert res.returncode != 0
    assert "lacks column(s) meter" in res.stderr.replace("\n", "")
    assert await db.fetchval("SELECT count(*) FROM billing.usage_events") == 0


async def test_missing_file_is_refused(postgres_dsn, tmp_path):
    res = run_ingest(postgres_dsn, tmp_path / "nope.jsonl")
    assert res.returncode != 0
    assert "does not exist" in res.stderr
