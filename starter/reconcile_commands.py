"""Reconciliation commands: `reconcile`, `approve`/`reject`, `report`, `runs`."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import typer
from rich.table import Table
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from billing import correlation
from billing.policy import MAX_SETTLE_SECONDS
from common import ui
from common.types import Mode
from reconcile.types import (
    ApprovalDecision,
    ApprovalResult,
    ReconcileProgress,
    ReconcileResult,
    ReconcileUsageInput,
)
from reconcile.workflow import ReconcileUsage
from starter import queries, visibility
from starter.follow import Step, Watch, start_and_follow
from starter.kit import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    build,
    choose_mode,
    console,
    database,
    day,
    fail,
    new_file,
    new_id,
    not_blank,
    read,
    run,
    temporal,
)

JSON_HELP = "Print one JSON object instead of tables"

# ---------------------------------------------------------------------------- reconcile


def reconcile(
    start_date: date | None = typer.Option(None, "--start-date", parser=day, help="First UTC day (YYYY-MM-DD); default: start of the billing period"),
    end_date: date | None = typer.Option(None, "--end-date", parser=day, help="Last UTC day, inclusive; default: today"),
    customer: list[str] = typer.Option([], "--customer", help="Limit to these customer ids (repeatable)"),
    meter: list[str] = typer.Option([], "--meter", help="Limit to these meter event names (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Apply corrections"),
    plan: bool = typer.Option(False, "--plan", help="Store the plan and wait for approve/reject"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the result, with a progress bar"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (run id and counts)"),
    settle_seconds: int | None = typer.Option(None, min=0, max=MAX_SETTLE_SECONDS,
                                              help="Seconds before pushes are verified (0 to 604800, i.e. 7 days)"),
    epsilon: str | None = typer.Option(None, help="Drift tolerance, e.g. 0.005"),
    auto_approve: bool | None = typer.Option(None, "--auto-approve/--no-auto-approve", help="Apply over-reporting beyond epsilon without approval"),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
    actor: str = typer.Option("cli", help="Who asks (audited)", callback=not_blank),
) -> None:
    """Start a ReconcileUsage run."""
    mode = choose_mode(dry_run=dry_run, apply=apply, plan=plan)
    request = build(ReconcileUsageInput, start_date=start_date, end_date=end_date, customers=customer, meters=meter,
                    mode=mode, actor=actor, settle_seconds=settle_seconds, epsilon=epsilon,
                    auto_approve_over_reporting=auto_approve)
    workflow_id = run_id or new_id("reconcile-usage", mode.value)
    raise typer.Exit(run(_reconcile(request, workflow_id, wait=wait, as_json=as_json)))


async def _reconcile(request: ReconcileUsageInput, workflow_id: str, *, wait: bool, as_json: bool) -> int:
    cid = correlation.current()
    total = await _customer_total() if wait else 0
    return await start_and_follow(
        ReconcileUsage.run, request, workflow_id, as_json=as_json, wait=wait,
        watch=Watch(ReconcileProgress, "customers", lambda p: _step(p, total), total=total),
        show=_print_result, to_json=lambda r: _result_json(r, cid),
        outcome=lambda r: EXIT_OK if r.status.value in ("completed", "rejected") else EXIT_FAILED,
        started=f"started run [bold]{workflow_id}[/bold] ({request.mode.value}), correlation id {cid}",
        id_key="run_id", extra={"correlation_id": cid})


def _result_json(result: ReconcileResult, correlation_id: str | None) -> dict[str, Any]:
    return {"run_id": result.run_id, "status": result.status.value, "mode": result.mode.value,
            "correlation_id": correlation_id,
            "window": [str(result.window_start), str(result.window_end)],
            "counts": result.counts.model_dump(),
            "verify_counts": result.verify_counts.model_dump() if result.verify_counts else None,
            "warnings": result.warnings}


def _step(p: ReconcileProgress, total: int) -> Step:
    return Step(p.phase.value + (" (paused)" if p.paused else ""),
                done=min(p.customers_scanned, total or p.customers_scanned))


async def _customer_total() -> int:
    """How many customers the bar counts to; 0 (a bar without total) when the database is not
    at hand: the run goes on without it."""
    with contextlib.suppress(Exception):
        async with database() as conn:
            return await queries.customer_count(conn)
    return 0


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
    for w in result.warnings:
        console.print(f"warning: {w}", markup=False)


# ---------------------------------------------------------------------------- approve / reject


def approve(run_id: str = typer.Argument(..., metavar="RUN", help="Run id (workflow id)"),
            actor: str = typer.Option(..., help="Who approves (audited)", callback=not_blank),
            reason: str | None = typer.Option(None, help="Why (audited)", callback=not_blank)) -> None:
    """Approve a stored plan: the run applies exactly that plan."""
    run(_decide(run_id, approved=True, decision=ApprovalDecision(actor=actor, reason=reason)))


def reject(run_id: str = typer.Argument(..., metavar="RUN", help="Run id (workflow id)"),
           actor: str = typer.Option(..., help="Who rejects (audited)", callback=not_blank),
           reason: str | None = typer.Option(None, help="Why (audited)", callback=not_blank)) -> None:
    """Reject a stored plan: nothing of it is applied."""
    run(_decide(run_id, approved=False, decision=ApprovalDecision(actor=actor, reason=reason)))


async def _decide(run_id: str, *, approved: bool, decision: ApprovalDecision) -> None:
    """Approve or reject; the same decision again (the run was already approved, or rejected)
    is a no-op that says so (exit 0), the other decision is refused (exit 1)."""
    handle: WorkflowHandle[Any, Any] = (await temporal()).get_workflow_handle(run_id)
    verb = "approve" if approved else "reject"
    try:
        res = await decide(handle, decision, approved=approved)
    except (WorkflowUpdateFailedError, RPCError) as e:
        message = getattr(e.cause, "message", e.cause) if isinstance(e, WorkflowUpdateFailedError) else e.message
        # "run was already approved by ...": the decision is being recorded; wait for it.
        decided_by = await _earlier_decision(run_id, approved=approved,
                                             wait_seconds=3.0 if "already" in str(message) else 0.0)
        if decided_by is not None:
            console.print(f"{run_id}: already {verb}d by {decided_by}; nothing to do")
            return
        raise fail(f"{verb} refused: {message}") from e
    console.print(f"{run_id}: {verb}d by {decision.actor} -> {res.status.value}")


async def _earlier_decision(run_id: str, *, approved: bool, wait_seconds: float) -> str | None:
    """Who made this same decision on the run already (None: nobody, or the other decision).
    The run records an accepted decision just after accepting it: wait a moment for it."""
    deadline = asyncio.get_running_loop().time() + wait_seconds
    async with database() as conn:
        while True:
            row = await queries.run_decision(conn, run_id)
            if row is None:
                return None
            if row["approved_by"] or row["rejected_by"]:
                return row["approved_by"] if approved else row["rejected_by"]
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.2)


async def decide(handle: WorkflowHandle[Any, Any], decision: ApprovalDecision, *,
                 approved: bool) -> ApprovalResult:
    """Approve or reject a run's stored plan (ReconcileUsage's `approve`/`reject` updates)."""
    update = ReconcileUsage.approve if approved else ReconcileUsage.reject
    # The SDK types an async update's result as its coroutine; what it returns is the result.
    return cast(ApprovalResult, await handle.execute_update(update, decision))


# ---------------------------------------------------------------------------- report


def report(run_id: str = typer.Argument(..., metavar="RUN", help="Run id (workflow id)"),
           as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
           export_discrepancies: Path | None = typer.Option(
               None, "--export-discrepancies", callback=new_file,
               help="Write every discrepancy to this CSV (its folder must exist)"),
           export_adjustments: Path | None = typer.Option(
               None, "--export-adjustments", callback=new_file,
               help="Write the closed periods' invoice adjustments (quantity, amount in minor units) "
                    "to this CSV, for finance")) -> None:
    """Show a run's counts and discrepancies."""
    data = read(queries.report, run_id)
    if data is None:
        raise fail(f"no reconciliation run {run_id!r}")
    if export_discrepancies:
        _export(data["discrepancies"], export_discrepancies)
    adjustments = [d for d in data["discrepancies"] if d.get("adjust_quantity") is not None]
    if export_adjustments:
        _export(adjustments, export_adjustments, queries.ADJUSTMENT_COLUMNS)
    if as_json:
        print(json.dumps(data, default=str))
        return
    print_report(data)
    if export_discrepancies:
        console.print(f"wrote {len(data['discrepancies'])} discrepancies to {export_discrepancies}")
    if export_adjustments:
        console.print(f"wrote {len(adjustments)} invoice adjustments to {export_adjustments}")


def _export(discrepancies: list[dict[str, Any]], path: Path,
            columns: list[str] = queries.DISCREPANCY_COLUMNS) -> None:
    try:
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for d in discrepancies:
                w.writerow({k: d.get(k) for k in columns})
    except OSError as e:
        raise fail(f"cannot write {path}: {e.strerror}", EXIT_BAD_INPUT) from e


def print_report(data: dict[str, Any], limit: int = 25) -> None:
    run_row = data["run"]
    console.print(f"[bold]{data['run_id']}[/bold]  {run_row['mode']}  {run_row['window_start']}..{run_row['window_end']}  "
                  f"status={run_row['status']}")
    counts = {k: v for k, v in (data["counts"] or {}).items() if k not in ("verify", "warnings") and v}
    console.print("counts: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "nothing found"))
    for w in (data["counts"] or {}).get("warnings") or []:
        console.print(f"warning: {w}", markup=False)
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


def runs(open_only: bool = typer.Option(False, "--open", help="Only runs not finished (running, waiting, paused)"),
         limit: int = typer.Option(20, min=1, max=10_000, help="How many, newest first"),
         as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
         kind: str | None = typer.Option(None, help=visibility.KIND_HELP),
         mode: Mode | None = typer.Option(None, help="Only runs in this mode (BillingMode)"),
         outcome: ui.Outcome | None = typer.Option(None, help=visibility.OUTCOME_HELP),
         customer: str | None = typer.Option(None, help="Only runs naming this customer (BillingCustomerIds)"),
         correlation_id: str | None = typer.Option(None, help="Only runs started under this correlation id"),
         schedule: str | None = typer.Option(None, help="Only runs this schedule started (usage-sync, ...)")) -> None:
    """List reconciliation runs: status, when, correlation id, and whether auto-healing is paused.
    With --kind/--mode/--outcome/--customer/--correlation-id/--schedule: every job's runs, found
    through Temporal's visibility API by their search attributes (docs/temporal-ui.md)."""
    query = visibility.visibility_query(kind=kind, mode=mode, outcome=outcome, customer=customer,
                                        correlation_id=correlation_id, schedule=schedule, open_only=open_only)
    if query is not None:
        visibility.print_runs(run(visibility.find_runs(query, limit)), query, as_json=as_json)
        return
    rows = read(queries.runs, open_only=open_only, limit=limit)
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


def register(app: typer.Typer) -> None:
    for fn in (reconcile, approve, reject, report, runs):
        app.command(fn.__name__)(fn)
