"""`billing-recon allocations ...`: reconcile duration usage, decide a plan, show one allocation.

    billing-recon allocations reconcile [--dry-run|--plan|--apply] [--customer C] [--json]
    billing-recon allocations approve RUN --actor alice [--reason ...]   (or reject)
    billing-recon allocations show ALLOCATION [--json]

Exit codes: 0 ok, 1 the run failed, 2 bad arguments (including an unknown customer). Errors go
to stderr, unwrapped and without a traceback; --json prints exactly one JSON object on stdout.
Mounted in starter/cli.py; it never imports the worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from allocations.types import (
    AllocationsProgress,
    AllocationsResult,
    ApprovalDecision,
    ApprovalResult,
    Phase,
    ReconcileAllocationsInput,
)
from common.types import Mode

WORKFLOW = "ReconcileAllocations"
EXIT_OK, EXIT_FAILED, EXIT_BAD_ARGS = 0, 1, 2
POLL_SECONDS = 0.5
BAD_ARGUMENT_ERRORS = {"UnknownCustomer"}

app = typer.Typer(no_args_is_help=True, help="Duration usage: allocations, usage records, debits, payments.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except RPCError as e:
        raise _fail(f"Temporal: {e.message}") from e


def _database_url() -> str:
    from billing.settings import get_settings

    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from billing.database_url import resolve_database_url  # or the local stack's database

    return resolve_database_url(settings)


async def _client() -> Any:
    from common.client import connect

    return await connect()


def _task_queue() -> str:
    from billing.settings import get_settings

    return get_settings().task_queue


# ---------------------------------------------------------------------------- reconcile


@app.command()
def reconcile(
    dry_run: bool = typer.Option(False, "--dry-run", help="Find and report; write nothing (the default)"),
    plan: bool = typer.Option(False, "--plan", help="Store the plan and wait for `allocations approve`"),
    apply: bool = typer.Option(False, "--apply", help="Find and fix"),
    customer: str | None = typer.Option(None, help="Only this customer"),
    actor: str = typer.Option("cli", help="Who runs it (audited)"),
    reason: str | None = typer.Option(None, help="Why (audited)"),
    as_of: str | None = typer.Option(None, help="The run's now, e.g. 2026-11-20T12:00:00Z (default: now)"),
    page_size: int = typer.Option(200, min=1, max=5000),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout"),
) -> None:
    """Reconcile allocations against usage records, the duration ledger, Stripe and payments."""
    if sum((dry_run, plan, apply)) > 1:
        raise _fail("choose one of --dry-run, --plan and --apply", EXIT_BAD_ARGS)
    mode = Mode.APPLY if apply else Mode.PLAN if plan else Mode.DRY_RUN
    try:
        request = ReconcileAllocationsInput(mode=mode, customer=customer, actor=actor, reason=reason,
                                            as_of=as_of, page_size=page_size)  # type: ignore[arg-type]
    except ValidationError as e:
        raise _fail(f"invalid arguments: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}", EXIT_BAD_ARGS) from e
    workflow_id = f"reconcile-allocations-{mode.value}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    raise typer.Exit(_run(_reconcile(request, workflow_id, as_json)))


async def _reconcile(request: ReconcileAllocationsInput, workflow_id: str, as_json: bool) -> int:
    client = await _client()
    handle: WorkflowHandle = await client.start_workflow(
        WORKFLOW, request, id=workflow_id, task_queue=_task_queue(), result_type=AllocationsResult)
    if not as_json:
        err.print(f"started {workflow_id}")
    waiting = asyncio.ensure_future(handle.result())
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=POLL_SECONDS)
            if done:
                result: AllocationsResult = waiting.result()
                break
            p = await handle.query("progress", result_type=AllocationsProgress)
            if p is not None and p.phase == Phase.AWAITING_APPROVAL:
                waiting.cancel()
                return _print_plan(workflow_id, p, as_json)
    except WorkflowFailureError as e:
        cause = e.cause
        message = getattr(cause, "message", None) or str(cause)
        error_type = getattr(cause, "type", None)
        if as_json:
            print(json.dumps({"workflow_id": workflow_id, "status": "failed", "error": message, "type": error_type}))
        else:
            err.print(f"[red]error:[/red] {workflow_id} failed: {message}", highlight=False)
        return EXIT_BAD_ARGS if error_type in BAD_ARGUMENT_ERRORS else EXIT_FAILED
    _print_result(result, as_json)
    return EXIT_OK


def _print_plan(workflow_id: str, p: AllocationsProgress, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"workflow_id": workflow_id, "status": "awaiting_approval",
                          "counts": p.counts.model_dump(mode="json")}))
    else:
        _counts_table(p.counts.model_dump())
        out.print(f"plan stored; approve with: billing-recon allocations approve {workflow_id} --actor NAME")
    return EXIT_OK


def _print_result(r: AllocationsResult, as_json: bool) -> None:
    if as_json:
        print(r.model_dump_json())
        return
    out.print(f"{r.run_id}: {r.mode.value} {r.outcome.value} (as of {r.as_of.isoformat()})")
    _counts_table(r.counts.model_dump())
    if r.applied is not None:
        out.print("applied after approval by " + (r.decided_by or "?"))
        _counts_table(r.applied.model_dump())
    for line in r.findings:
        out.print(line, highlight=False, markup=False)


def _counts_table(counts: dict[str, int]) -> None:
    for k, v in counts.items():
        if v:
            out.print(f"  {k}: {v}", highlight=False, markup=False)


@app.command()
def approve(run_id: str, actor: str = typer.Option(..., help="Who approves (audited)"),
            reason: str | None = typer.Option(None)) -> None:
    """Approve a stored plan: it is applied, each fix re-checked first."""
    raise typer.Exit(_run(_decide(run_id, "approve", ApprovalDecision(actor=actor, reason=reason))))


@app.command()
def reject(run_id: str, actor: str = typer.Option(..., help="Who rejects (audited)"),
           reason: str | None = typer.Option(None)) -> None:
    """Reject a stored plan: nothing is applied."""
    raise typer.Exit(_run(_decide(run_id, "reject", ApprovalDecision(actor=actor, reason=reason))))


async def _decide(run_id: str, update: str, decision: ApprovalDecision) -> int:
    from temporalio.client import WorkflowUpdateFailedError

    client = await _client()
    try:
        res = await client.get_workflow_handle(run_id).execute_update(update, decision, result_type=ApprovalResult)
    except WorkflowUpdateFailedError as e:
        err.print(f"[red]error:[/red] {getattr(e.cause, 'message', None) or e.cause}", highlight=False)
        return EXIT_FAILED
    out.print(f"{run_id}: {'approved' if res.approved else 'rejected'} by {decision.actor}")
    return EXIT_OK


# ---------------------------------------------------------------------------- show


@app.command()
def show(allocation: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One allocation: timeline, usage records, debits, meter events and audit."""
    data = _run(_show(allocation))
    if data is None:
        raise _fail(f"unknown allocation {allocation!r}", EXIT_BAD_ARGS)
    if as_json:
        print(json.dumps(data, default=str))
        return
    a = data["allocation"]
    out.print(f"allocation {a['allocation_id']} ({a['resource_class']}) customer {a['customer_id']}: {a['status']}",
              highlight=False)
    # One line per row (never folded at the terminal width): greppable, and complete.
    for title, rows in (("timeline", data["timeline"]), ("usage records", data["usage"]),
                        ("debits", data["debits"]), ("meter events", data["events"]),
                        ("findings", data["findings"]), ("audit", data["audit"])):
        out.print(f"{title}:" + ("" if rows else " (none)"), highlight=False, markup=False)
        for r in rows:
            out.print("  " + "  ".join(f"{k}={_text(v)}" for k, v in r.items() if v is not None),
                      highlight=False, markup=False)


def _text(v: Any) -> str:
    return v.isoformat() if isinstance(v, datetime) else str(v)


async def _show(allocation_id: str) -> dict[str, Any] | None:
    from billing import db

    conn = await db.connect(_database_url())
    try:
        a = await conn.fetchrow("SELECT * FROM billing.allocations WHERE allocation_id = $1", allocation_id)
        if a is None:
            return None
        usage = await conn.fetch(
            "SELECT usage_id, start_time, end_time, last_billed_at, billed_cost_minor, accrued_cost_minor, opened_by, "
            "closed_by, close_flag FROM billing.duration_usage WHERE allocation_id = $1 ORDER BY start_time",
            allocation_id)
        ids = [u["usage_id"] for u in usage]
        debits = await conn.fetch(
            "SELECT usage_id, slice_index, slice_start, slice_end, amount_minor, source, actor, created_at "
            "FROM billing.duration_ledger WHERE kind = 'debit' AND usage_id = ANY($1) ORDER BY usage_id, slice_index",
            ids)
        events = await conn.fetch(
            """
            SELECT e.request_id, e.meter, e.quantity, e.occurred_at,
                   (SELECT string_agg(DISTINCT p.status, ',') FROM billing.stripe_usage_pushes p
                     WHERE p.customer_id = e.customer_id AND p.meter = e.meter
                       AND p.usage_day = (e.occurred_at AT TIME ZONE 'UTC')::date) AS stripe_push_status
              FROM billing.usage_events e
             WHERE e.request_id LIKE ANY($1) ORDER BY e.occurred_at
            """, [f"dur:{u}:%" for u in ids])
        audit = await conn.fetch(
            """
            SELECT at, actor, action, entity_id, reason, correlation_id, workflow_id FROM billing.audit_log
             WHERE (entity_type = 'duration_usage' AND entity_id = ANY($1)) OR after->>'allocation_id' = $2
             ORDER BY at, id
            """, ids, allocation_id)
        findings = await conn.fetch(
            "SELECT run_id, kind, status, detail, updated_at FROM billing.allocation_findings "
            "WHERE allocation_id = $1 ORDER BY updated_at DESC LIMIT 20", allocation_id)
    finally:
        await conn.close()
    timeline = [{"event": k.removesuffix("_at"), "at": a[k]}
                for k in ("activated_at", "releasing_at", "release_failed_at", "released_at") if a[k] is not None]
    timeline.sort(key=lambda r: r["at"])
    return {"allocation": dict(a), "timeline": timeline, "usage": [dict(r) for r in usage],
            "debits": [dict(r) for r in debits], "events": [dict(r) for r in events],
            "audit": [dict(r) for r in audit], "findings": [dict(r) for r in findings]}
