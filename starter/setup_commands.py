"""Setting up and checking a deployment: `migrate`, `worker`, `ingest` (load usage), `smoke`."""

from __future__ import annotations

import uuid
from pathlib import Path

import typer

from billing import db
from billing.ingest import IngestReport, UnknownCustomers, read_lines
from billing.ingest import ingest as do_ingest
from health.types import SmokeCheck
from health.workflow import Smoke
from starter import queries
from starter.follow import Step, live, start_and_follow
from starter.kit import console, database, database_url, err, fail, run

# How many invalid lines are listed on stderr at most.
LISTED_INVALID = 50


def migrate() -> None:
    """Apply the SQL migrations of the billing schema (idempotent)."""
    try:
        applied = run(db.migrate(database_url()))
    except db.MigrationError as e:
        raise fail(str(e)) from None  # one unwrapped line on stderr, exit 1
    console.print(f"applied: {', '.join(applied)}" if applied else "schema up to date")


def worker() -> None:
    """Run a worker (wiring in worker.py) until SIGTERM/SIGINT."""
    import importlib

    importlib.import_module("worker").main()


def ingest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL or CSV usage events"),
    source: str = typer.Option("cli", help="Recorded in usage_events.source"),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid",
        help="Write the valid lines and skip the invalid ones (bad format, fields or unknown customer); "
             "each skipped line is reported with its number and the exit code is 1"),
) -> None:
    """Load usage events into billing.usage_events, idempotent by request_id.

    The whole file is validated first (format, fields, known customers): by default one bad
    line and nothing is written. With --skip-invalid the valid lines are written, every
    invalid line is reported by number, and the command exits 1."""

    async def go() -> tuple[IngestReport, list[str]]:
        check = IngestReport()
        customers: dict[str, list[int]] = {}
        try:
            for n, ev in read_lines(file, check):
                customers.setdefault(ev.customer_id, []).append(n)
        except ValueError as e:
            raise fail(str(e)) from e
        if check.invalid and not skip_invalid:
            _list(check.invalid)
            raise fail(f"{len(check.invalid)} invalid line(s) in {file}; nothing was written "
                       "(--skip-invalid writes the valid lines)")
        async with database() as conn:
            known = await queries.known_customers(conn, sorted(customers))
            unknown = sorted(set(customers) - known)
            if unknown and not skip_invalid:
                raise fail(f"{UnknownCustomers(unknown)}; nothing was written")
            skipped = list(check.invalid) + [
                f"line {n}: unknown customer {c}" for c in unknown for n in customers[c]]
            skipped.sort(key=lambda s: int(s.split(":", 1)[0].removeprefix("line ")))
            valid = sum(len(v) for c, v in customers.items() if c in known)
            unknown_set = set(unknown)
            with live("ingest", total=valid) as show:
                events = (ev for _, ev in read_lines(file, IngestReport()) if ev.customer_id not in unknown_set)
                report = await do_ingest(conn, events, source=source,
                                         on_batch=lambda r: show(Step("", done=r.read)))
            return report, skipped

    report, skipped = run(go())
    console.print(f"read {report.read}, inserted {report.inserted}, duplicates {report.duplicates} "
                  "(absorbed, counted in dedupe_count)")
    if skipped:
        _list(skipped)
        more = f" (first {LISTED_INVALID} listed)" if len(skipped) > LISTED_INVALID else ""
        raise fail(f"{len(skipped)} invalid line(s) in {file} skipped{more}; the {report.read} valid line(s) "
                   "were written")


def _list(lines: list[str]) -> None:
    for line in lines[:LISTED_INVALID]:
        err.print(f"  {line}", markup=False)


def smoke() -> None:
    """Run the Smoke workflow: one trip through Postgres and Stripe via activities."""
    raise typer.Exit(run(start_and_follow(
        Smoke.run, SmokeCheck(), f"smoke-{uuid.uuid4().hex[:8]}", as_json=False,
        show=lambda check: console.print(check.model_dump_json(indent=2)))))


def register(app: typer.Typer) -> None:
    for fn in (migrate, worker, ingest, smoke):
        app.command(fn.__name__)(fn)
