"""`billing-recon ingest FILE` as an operator runs it (subprocess, DATABASE_URL set): idempotent by
request_id, and all-or-nothing on bad input."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.integration.ingest_helpers import event, run_ingest, stored, write_jsonl

pytestmark = pytest.mark.integration



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


async def test_values_outside_the_contract_are_refused_line_by_line_and_nothing_is_written(db, postgres_dsn, tmp_path):
    p = write_jsonl(tmp_path / "u.jsonl", [
        event("ok-1"),
        event("huge", quantity="1e100000"),
        event("nan", quantity="NaN"),
        event("neg", quantity="-3"),
        event("old", at="1999-06-01T00:00:00Z"),
        event("ahead", at="2999-06-01T00:00:00Z"),
    ])
    res = run_ingest(postgres_dsn, p)
    assert res.returncode == 1, res
    lines = res.stderr.splitlines()
    for n, reason in [(2, "quantity must be below 1E+15"), (3, "finite number"),
                      (4, "quantity must not be negative"), (5, "is before 2000-01-01"),
                      (6, "more than a day in the future")]:
        assert any(line.startswith(f"  line {n}: ") and reason in line for line in lines), (n, res.stderr)
    assert lines[-1] == f"error: 5 invalid line(s) in {p}; nothing was written (--skip-invalid writes the valid lines)"
    assert await stored(db) == {}


POISON = [("nan", "NaN"), ("inf", "Infinity"), ("neg-inf", "-Infinity"), ("e74", "1e74"), ("neg", "-1"),
          ("e15", "1e15")]


async def test_the_sql_contract_refuses_poison_rows(db):
    """Applications writing SQL directly (README "Ingestion contract") meet the same bounds."""
    import asyncpg

    for rid, q in POISON:
        with pytest.raises(asyncpg.CheckViolationError, match="usage_events_quantity_bounded"):
            await db.execute("INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at) "
                             "VALUES ($1, 'acme', 'api_requests', $2::numeric, now())", rid, q)
    for rid, at in [("old", "1999-12-31 23:59:59+00"), ("ahead", "now() + interval '2 days'")]:
        with pytest.raises(asyncpg.CheckViolationError, match="usage_events_occurred_at_sane"):
            await db.execute("INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at) "
                             f"VALUES ($1, 'acme', 'api_requests', 1, {at if 'now' in at else repr(at)})", rid)
    await db.execute("INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at) "
                     "VALUES ('fine', 'acme', 'api_requests', 999999999999999.5, now() + interval '23 hours')")
    assert set(await stored(db)) == {"fine"}


async def test_a_database_already_holding_poison_rows_still_migrates(postgres_dsn):
    """The constraints are added NOT VALID: old rows stay as they are (reconciliation isolates
    them), new ones are refused."""
    import uuid

    import asyncpg

    from billing.db import migrate, migration_files
    from devstack.postgres import ensure_database, with_database

    name = f"billing_poisoned_{uuid.uuid4().hex[:8]}"
    await ensure_database(postgres_dsn, name)
    dsn = with_database(postgres_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        before = [(v, sql) for v, sql in migration_files() if v < "0009"]
        await conn.execute("CREATE TABLE public.billing_schema_migrations (version text PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        for version, sql in before:
            await conn.execute(sql)
            await conn.execute("INSERT INTO public.billing_schema_migrations (version) VALUES ($1)", version)
        await conn.execute("INSERT INTO billing.customers (customer_id) VALUES ('acme')")
        for rid, q in POISON:
            await conn.execute("INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at) "
                               "VALUES ($1, 'acme', 'api_requests', $2::numeric, '1970-01-01')", rid, q)
        applied = await migrate(dsn)
        assert "0009_usage_checks" in applied
        assert await conn.fetchval("SELECT count(*) FROM billing.usage_events") == len(POISON)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at) "
                               "VALUES ('new-nan', 'acme', 'api_requests', 'NaN', now())")
    finally:
        await conn.close()
        admin = await asyncpg.connect(postgres_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
