"""`billing-recon ingest` as an operator runs it, and the rows it leaves: shared by the ingest and
bad-input tests. The `db` fixture (two customers) is in tests/integration/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

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


async def stored(pool) -> dict[str, tuple[str, Decimal, int]]:
    rows = await pool.fetch("SELECT request_id, customer_id, quantity, dedupe_count FROM billing.usage_events")
    return {r["request_id"]: (r["customer_id"], r["quantity"], r["dedupe_count"]) for r in rows}
