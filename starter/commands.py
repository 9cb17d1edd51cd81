"""Operator commands: migrate, worker, ingest, reconcile, approve/reject, pause/resume, report,
smoke, demo. They start workflows and read results; they never import the worker."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import uuid
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from billing import correlation, db
from billing.models import (
    ApprovalDecision,
    Mode,
    ReconcileProgress,
    ReconcileResult,
    ReconcileUsageInput,
)
from billing.settings import get_settings
from billing.temporal_client import connect

# Piped or in CI there is no terminal width; rich would assume 80 and fold every table.
_WIDTH = None if sys.stdout.isatty() else 130
console = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)

RECONCILE_WORKFLOW = "ReconcileUsage"


def _database_url() -> str:
    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from starter.stack import resolve_database_url

    return resolve_database_url(settings)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def print_workflow_failure(workflow_id: str, e: WorkflowFailureError, *, as_json: bool,
                           id_key: str = "workflow_id", **extra: Any) -> int:
    """A failed workflow as the CLI reports it: one JSON object or one red line; exit code 1."""
    message = getattr(e.cause, "message", None) or str(e.cause)
    if as_json:
        print(json.dumps({id_key: workflow_id, "status": "failed", "error": message,
                          "type": getattr(e.cause, "type", None), **extra}))
    else:
        err.print(f"[red]{workflow_id} failed:[/red] {message}")
    return 1


def _run(coro):
    try:
        return asyncio.run(coro)
    except RPCError as e:
        raise _fail(f"Temporal: {e.message}") from e


# ---------------------------------------------------------------------------- setup commands


def migrate() -> None:
    """Apply the SQL migrations of the billing schema (idempotent)."""
    try:
        applied = asyncio.run(db.migrate(_database_url()))
    except db.MigrationError as e:
        raise SystemExit(f"error: {e}") from None  # one unwrapped line on stderr, exit 1
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
    from billing.ingest import IngestReport, UnknownCustomers, read_lines
    from billing.ingest import ingest as do_ingest

    async def go() -> tuple[IngestReport, list[str]]:
        check = IngestReport()
        customers: dict[str, list[int]] = {}
        try:
            for n, ev in read_lines(file, check):
                customers.setdefault(ev.customer_id, []).append(n)
        except ValueError as e:
            raise _fail(str(e)) from e
        if check.invalid and not skip_invalid:
            for line in check.invalid[:50]:
                err.print(f"  {line}")
            raise _fail(f"{len(check.invalid)} invalid line(s) in {file}; nothing was written "
                        "(--skip-invalid writes the valid lines)")
        conn = await db.connect(_database_url())
        try:
            known = {r["customer_id"] for r in await conn.fetch(
                "SELECT customer_id FROM billing.customers WHERE customer_id = ANY($1)", sorted(customers))}
            unknown = sorted(set(customers) - known)
            if unknown and not skip_invalid:
                raise _fail(f"{UnknownCustomers(unknown)}; nothing was written")
            skipped = list(check.invalid) + [
                f"line {n}: unknown customer {c}" for c in unknown for n in customers[c]]
            skipped.sort(key=lambda s: int(s.split(":", 1)[0].removeprefix("line ")))
            valid = sum(len(v) for c, v in customers.items() if c in known)
            unknown_set = set(unknown)
            with Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err) as bar:
                task = bar.add_task("ingest", total=valid)
                events = (ev for _, ev in read_lines(file, IngestReport()) if ev.customer_id not in unknown_set)
                report = await do_ingest(conn, events, source=source,
                                         on_batch=lambda r: bar.update(task, completed=r.read))
            return report, skipped
        finally:
            await conn.close()

    report, skipped = asyncio.run(go())
    console.print(f"read {report.read}, inserted {report.inserted}, duplicates {report.duplicates} "
                  "(absorbed, counted in dedupe_count)")
    if skipped:
        for line in skipped[:50]:
            err.print(f"  {line}")
        more = " (first 50 listed)" if len(skipped) > 50 else ""
        raise _fail(f"{len(skipped)} invalid line(s) in {file} skipped{more}; the {report.read} valid line(s) "
                    "were written")


# ---------------------------------------------------------------------------- reconcile


def reconcile(
    start_date: str | None = typer.Option(None, "--start-date", help="First UTC day (YYYY-MM-DD); default: start of the billing period"),
    end_date: str | None = typer.Option(None, "--end-date", help="Last UTC day, inclusive; default: today"),
    customer: list[str] = typer.Option([], "--customer", help="Limit to these customer ids (repeatable)"),
    meter: list[str] = typer.Option([], "--meter", help="Limit to these meter event names (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Apply corrections"),
    plan: bool = typer.Option(False, "--plan", help="Store the plan and wait for approve/reject"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the result, with a progress bar"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (run id and counts)"),
    settle_seconds: int | None = typer.Option(None, help="Seconds before pushes are verified"),
    epsilon: str | None = typer.Option(None, help="Drift tolerance, e.g. 0.005"),
    auto_approve: bool | None = typer.Option(None, "--auto-approve/--no-auto-approve", help="Apply over-reporting beyond epsilon without approval"),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
    actor: str = typer.Option("cli", help="Who asks (audited)"),
) -> None:
    """Start a ReconcileUsage run."""
    if sum([dry_run, apply, plan]) > 1:
        raise _fail("choose one of --dry-run, --apply, --plan", 2)
    mode = Mode.APPLY if apply else Mode.PLAN if plan else Mode.DRY_RUN
    try:
        request = ReconcileUsageInput(
            start_date=date.fromisoformat(start_date) if start_date else None,
            end_date=date.fromisoformat(end_date) if end_date else None,
            customers=customer, meters=meter, mode=mode, actor=actor,
            settle_seconds=settle_seconds,
            epsilon=Decimal(epsilon) if epsilon is not None else None,
            auto_approve_over_reporting=auto_approve,
        )
    except Exception as e:  # pydantic / date parsing: a precise message, exit 2
        raise _fail(f"invalid arguments: {e}", 2) from e
    workflow_id = run_id or f"reconcile-usage-{mode.value}-{uuid.uuid4().hex[:12]}"
    code = _run(_reconcile(request, workflow_id, wait=wait, as_json=as_json))
    raise typer.Exit(code)


async def _reconcile(request: ReconcileUsageInput, workflow_id: str, *, wait: bool, as_json: bool) -> int:
    settings = get_settings()
    client = await connect()
    handle = await client.start_workflow(
        RECONCILE_WORKFLOW, request, id=workflow_id, task_queue=settings.task_queue,
        result_type=ReconcileResult)
    cid = correlation.current()
    if not wait:
        if as_json:
            print(json.dumps({"run_id": workflow_id, "status": "started", "correlation_id": cid}))
        else:
            console.print(f"started run [bold]{workflow_id}[/bold] ({request.mode.value}), "
                          f"correlation id {cid}")
        return 0
    try:
        result = await _wait_with_progress(handle, quiet=as_json)
    except WorkflowFailureError as e:
        cause = e.cause
        message = getattr(cause, "message", None) or str(cause)
        if as_json:
            print(json.dumps({"run_id": workflow_id, "status": "failed", "error": message,
                              "correlation_id": cid}))
        else:
            err.print(f"[red]run {workflow_id} failed:[/red] {message}")
        return 1
    if as_json:
        print(json.dumps({"run_id": result.run_id, "status": result.status.value, "mode": result.mode.value,
                          "correlation_id": cid,
                          "window": [str(result.window_start), str(result.window_end)],
                          "counts": result.counts.model_dump(),
                          "verify_counts": result.verify_counts.model_dump() if result.verify_counts else None}))
    else:
        _print_result(result)
    return 0 if result.status.value in ("completed", "rejected") else 1


async def follow(handle: WorkflowHandle, progress_type: type, on_progress: Callable[[Any], None],
                 interval: float = 0.5) -> Any:
    """Await a workflow's result, handing each answer of its `progress` query to `on_progress`
    meanwhile. Raises what the result raises (WorkflowFailureError)."""
    result_task = asyncio.create_task(handle.result())
    while not result_task.done():
        try:
            p = await handle.query("progress", result_type=progress_type)
            if p is not None:
                on_progress(p)
        except RPCError:
            pass  # not started yet, or between continue-as-new runs
        await asyncio.wait({result_task}, timeout=interval)
    return result_task.result()


async def _wait_with_progress(handle: WorkflowHandle, quiet: bool) -> ReconcileResult:
    total = await _customer_total()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[phase]}"), TimeElapsedColumn(), console=err,
                  disable=quiet, transient=False) as bar:
        task = bar.add_task("customers", total=total, phase="starting")

        def show(p: ReconcileProgress) -> None:
            bar.update(task, completed=min(p.customers_scanned, total or p.customers_scanned),
                       phase=p.phase.value + (" (paused)" if p.paused else ""))

        return await follow(handle, ReconcileProgress, show)


async def _customer_total() -> int:
    try:
        conn = await db.connect(_database_url())
    except Exception:
        return 0
    try:
        return await conn.fetchval("SELECT count(*) FROM billing.customers")
    finally:
        await conn.close()


def _print_result(result: ReconcileResult) -> None:
    table = Table(title=f"{result.run_id}: {result.status.value} ({result.mode.value}, "
                        f"{result.window_start}..{result.window_end})")
    table.add_column("count")
    table.add_column("scan", justify="right")
    table.add_column("verify", justify="right")
    for name in result.counts.model_fields:
        v = getattr(result.counts, name)
        vv = getattr(result.verify_counts, name) if result.verify_counts else ""
        table.add_row(name, str(v), str(vv))
    console.print(table)


# ---------------------------------------------------------------------------- approve / pause


def approve(run: str = typer.Argument(..., help="Run id (workflow id)"),
            actor: str = typer.Option(..., help="Who approves (audited)"),
            reason: str | None = typer.Option(None)) -> None:
    """Approve a stored plan: the run applies exactly that plan."""
    _decide(run, "approve", actor, reason)


def reject(run: str = typer.Argument(..., help="Run id (workflow id)"),
           actor: str = typer.Option(..., help="Who rejects (audited)"),
           reason: str | None = typer.Option(None)) -> None:
    """Reject a stored plan: nothing of it is applied."""
    _decide(run, "reject", actor, reason)


def _decide(run: str, update: str, actor: str, reason: str | None) -> None:
    async def go() -> None:
        client = await connect()
        handle = client.get_workflow_handle(run)
        try:
            res = await handle.execute_update(update, ApprovalDecision(actor=actor, reason=reason))
        except WorkflowUpdateFailedError as e:
            raise _fail(f"{update} refused: {getattr(e.cause, 'message', e.cause)}") from e
        console.print(f"{run}: {update}d by {actor} -> {res['status'] if isinstance(res, dict) else res.status}")

    _run(go())


# ---------------------------------------------------------------------------- report

DISCREPANCY_COLUMNS = [
    "discrepancy_key", "kind", "status", "customer_id", "stripe_customer_id", "meter", "usage_day",
    "period_start", "ledger_value", "counter_value", "pushed_value", "stripe_value", "diff",
    "diff_pct", "beyond_epsilon", "action", "detail",
]


def report(run: str = typer.Argument(..., help="Run id (workflow id)"),
           as_json: bool = typer.Option(False, "--json"),
           export_discrepancies: Path | None = typer.Option(None, "--export-discrepancies", help="Write every discrepancy to this CSV")) -> None:
    """Show a run's counts and discrepancies."""
    data = asyncio.run(load_report(_database_url(), run))
    if data is None:
        raise _fail(f"no reconciliation run {run!r}")
    if export_discrepancies:
        with export_discrepancies.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=DISCREPANCY_COLUMNS)
            w.writeheader()
            for d in data["discrepancies"]:
                w.writerow({k: d.get(k) for k in DISCREPANCY_COLUMNS})
    if as_json:
        print(json.dumps(data, default=str))
        return
    print_report(data)
    if export_discrepancies:
        console.print(f"wrote {len(data['discrepancies'])} discrepancies to {export_discrepancies}")


async def load_report(dsn: str, run: str) -> dict[str, Any] | None:
    conn = await db.connect(dsn)
    try:
        r = await conn.fetchrow("SELECT * FROM billing.reconciliation_runs WHERE run_id = $1", run)
        if r is None:
            return None
        rows = await conn.fetch(
            f"SELECT {', '.join(DISCREPANCY_COLUMNS)} FROM billing.discrepancies WHERE run_id = $1 "
            "ORDER BY discrepancy_key", run)
    finally:
        await conn.close()
    run_data = dict(r)
    return {"run": run_data, "run_id": run, "status": run_data["status"], "counts": run_data["counts"],
            "discrepancies": [dict(x) for x in rows]}


def print_report(data: dict[str, Any], limit: int = 25) -> None:
    run = data["run"]
    console.print(f"[bold]{data['run_id']}[/bold]  {run['mode']}  {run['window_start']}..{run['window_end']}  "
                  f"status={run['status']}")
    counts = {k: v for k, v in (data["counts"] or {}).items() if k != "verify" and v}
    console.print("counts: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "nothing found"))
    by_kind: dict[tuple[str, str], int] = {}
    for d in data["discrepancies"]:
        by_kind[(d["kind"], d["status"])] = by_kind.get((d["kind"], d["status"]), 0) + 1
    if by_kind:
        t = Table(title="discrepancies by kind")
        t.add_column("kind")
        t.add_column("status")
        t.add_column("keys", justify="right")
        for (k, s), n in sorted(by_kind.items()):
            t.add_row(k, s, str(n))
        console.print(t)
        t = Table(title=f"first {min(limit, len(data['discrepancies']))} discrepancies")
        for col in ("kind", "status", "key", "ledger", "was", "action"):
            t.add_column(col, overflow="fold")
        for d in data["discrepancies"][:limit]:
            when = d.get("usage_day") or f"period {d.get('period_start')}"
            was = d.get("stripe_value") if d.get("stripe_value") is not None else d.get("counter_value")
            was_label = "stripe" if d.get("stripe_value") is not None else "counter"
            t.add_row(d["kind"], d["status"], f"{d['customer_id']} {d['meter']} {when}",
                      _num(d.get("ledger_value")), f"{was_label} {_num(was)}", d.get("action") or "")
        console.print(t)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    d = Decimal(str(v))
    return format(d.normalize(), "f") if d == d.to_integral() else str(d.normalize())


# ---------------------------------------------------------------------------- runs

RUNS_SQL = """
SELECT r.run_id, r.kind, r.mode, r.status, r.window_start, r.window_end, r.started_at,
       r.finished_at, r.correlation_id, r.error,
       p.action = 'pause_auto_healing' AS paused, p.at AS paused_at, p.actor AS paused_by,
       p.reason AS pause_reason
  FROM billing.reconciliation_runs r
  LEFT JOIN LATERAL (
        SELECT action, at, actor, reason FROM billing.audit_log a
         WHERE a.workflow_id = r.run_id AND a.action IN ('pause_auto_healing', 'resume_auto_healing')
         ORDER BY at DESC, id DESC LIMIT 1) p ON true
 WHERE NOT $1 OR r.finished_at IS NULL
 ORDER BY r.started_at DESC
 LIMIT $2
"""


def runs(open_only: bool = typer.Option(False, "--open", help="Only runs not finished (running, waiting, paused)"),
         limit: int = typer.Option(20, help="How many, newest first"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """List reconciliation runs: status, when, correlation id, and whether auto-healing is paused."""

    async def go() -> list[dict[str, Any]]:
        conn = await db.connect(_database_url())
        try:
            return [dict(r) for r in await conn.fetch(RUNS_SQL, open_only, limit)]
        finally:
            await conn.close()

    rows = asyncio.run(go())
    if as_json:
        print(json.dumps(rows, default=str))
        return
    t = Table(title="open reconciliation runs" if open_only else f"last {limit} reconciliation runs")
    for col in ("run", "mode", "status", "window", "started", "finished", "paused", "correlation id"):
        t.add_column(col, overflow="fold")
    for r in rows:
        paused = f"since {r['paused_at']:%Y-%m-%d %H:%M} by {r['paused_by']}" if r["paused"] and not r["finished_at"] else ""
        t.add_row(r["run_id"], r["mode"], r["status"], f"{r['window_start']}..{r['window_end']}",
                  f"{r['started_at']:%Y-%m-%d %H:%M:%S}",
                  f"{r['finished_at']:%Y-%m-%d %H:%M:%S}" if r["finished_at"] else "",
                  paused, r["correlation_id"] or "")
    console.print(t)


# ---------------------------------------------------------------------------- smoke


def smoke() -> None:
    """Run the Smoke workflow: one trip through Postgres and Stripe via activities."""
    from billing.models_smoke import SmokeCheck

    async def go() -> SmokeCheck:
        client = await connect()
        return await client.execute_workflow(
            "Smoke", SmokeCheck(), id=f"smoke-{uuid.uuid4().hex[:8]}",
            task_queue=get_settings().task_queue, result_type=SmokeCheck)

    res = _run(go())
    console.print(res.model_dump_json(indent=2))


def register(app: typer.Typer) -> None:
    for fn in (migrate, worker, ingest, reconcile, approve, reject, report, runs, smoke):
        app.command(fn.__name__)(fn)
    from starter import demo

    app.command("demo")(demo.demo)

