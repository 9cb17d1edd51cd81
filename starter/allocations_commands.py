"""Duration usage: `allocations reconcile`, `allocations approve`/`reject`, `allocations show`.

    billing-recon allocations reconcile [--dry-run|--plan|--apply] [--customer C] [--json]
    billing-recon allocations approve RUN --actor alice [--reason ...]   (or reject)
    billing-recon allocations show ALLOCATION [--json]

`reconcile` follows the run to its result (a progress line on stderr, none with --json); with
--plan it stops once the plan is stored and awaits approval. Exit codes as every command's
(README "Exit codes"): 0 ok, 1 the run failed or a fix was refused by the database, 2 bad input
(a blank actor or reason, two modes, an unknown customer)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

import typer
from rich.table import Table
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from allocations.types import (
    AllocationsProgress,
    AllocationsResult,
    ApprovalDecision,
    ApprovalResult,
    Counts,
    Phase,
    ReconcileAllocationsInput,
)
from allocations.workflow import ReconcileAllocations
from starter import queries
from starter.follow import Step, Until, Watch, start_and_follow
from starter.kit import (
    EXIT_FAILED,
    EXIT_OK,
    build,
    choose_mode,
    console,
    counts_table,
    err,
    fail,
    moment,
    new_id,
    not_blank,
    read,
    run,
    temporal,
)

allocations_app = typer.Typer(no_args_is_help=True)
JSON_HELP = "Print one JSON object"
RUN_HELP = "Run id (workflow id)"


# ---------------------------------------------------------------------------- reconcile


@allocations_app.command("reconcile")
def reconcile(
    dry_run: bool = typer.Option(False, "--dry-run", help="Find and report; write nothing (the default)"),
    plan: bool = typer.Option(False, "--plan", help="Store the plan and wait for `allocations approve`"),
    apply: bool = typer.Option(False, "--apply", help="Find and fix"),
    customer: str | None = typer.Option(None, help="Only this customer"),
    actor: str = typer.Option("cli", help="Who runs it (audited)", callback=not_blank),
    reason: str | None = typer.Option(None, help="Why (audited)", callback=not_blank),
    as_of: datetime | None = typer.Option(
        None, parser=moment, help="The run's now: 2026-11-20T12:00:00Z (no zone = UTC) or 3d/12h/30m ago; default now"),
    page_size: int = typer.Option(200, min=1, max=5000, help="Allocations (or payment sessions) per page"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """Reconcile allocations against usage records, the duration ledger, Stripe and payments."""
    mode = choose_mode(dry_run=dry_run, apply=apply, plan=plan)
    request = build(ReconcileAllocationsInput, mode=mode, customer=customer, actor=actor, reason=reason,
                    as_of=as_of, page_size=page_size)
    workflow_id = run_id or new_id("reconcile-allocations", mode.value)
    raise typer.Exit(run(start_and_follow(
        ReconcileAllocations.run, request, workflow_id, as_json=as_json,
        watch=Watch(AllocationsProgress, "allocations", _step, until=Until(
            holds=lambda p: p.phase == Phase.AWAITING_APPROVAL, show=_print_plan,
            to_json=lambda p: {"status": "awaiting_approval", "counts": p.counts.model_dump(mode="json")})),
        show=_print_result, outcome=_outcome)))


def _step(p: AllocationsProgress) -> Step:
    c = p.counts
    return Step(f"{p.phase.value}: {c.allocations_scanned} allocations, {c.payment_sessions_scanned} payment "
                f"sessions, {c.fixable} fixable, {c.fixes_applied} fixed" + (" (paused)" if p.paused else ""))


def _outcome(r: AllocationsResult) -> int:
    """A fix the database refused is what the run could not fix: exit 1."""
    refused = r.counts.fix_errors + (r.applied.fix_errors if r.applied else 0)
    return EXIT_FAILED if refused else EXIT_OK


def _print_plan(p: AllocationsProgress) -> None:
    console.print(_found(f"{p.run_id}: plan stored", p.counts))
    console.print(f"approve with: billing-recon allocations approve {p.run_id} --actor NAME", highlight=False,
                  soft_wrap=True)


def _print_result(r: AllocationsResult) -> None:
    console.print(_found(f"{r.run_id}: {r.mode.value} {r.outcome.value} (as of {r.as_of.isoformat()})", r.counts))
    if r.applied is not None:
        console.print(_found(f"applied after approval by {r.decided_by or '?'}", r.applied))
    if r.paused:
        err.print("[yellow]auto-healing or this run was paused: observe-only, those fixes were not made[/yellow]")
    for line in r.findings:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _found(title: str, counts: Counts) -> Table:
    return counts_table(title, counts, skip_zero=True)


# ---------------------------------------------------------------------------- approve / reject


@allocations_app.command("approve")
def approve(run_id: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
            actor: str = typer.Option(..., help="Who approves (audited)", callback=not_blank),
            reason: str | None = typer.Option(None, help="Why (audited)", callback=not_blank)) -> None:
    """Approve a stored plan: it is applied, each fix re-checked first."""
    run(_decide(run_id, approved=True, decision=ApprovalDecision(actor=actor, reason=reason)))


@allocations_app.command("reject")
def reject(run_id: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
           actor: str = typer.Option(..., help="Who rejects (audited)", callback=not_blank),
           reason: str | None = typer.Option(None, help="Why (audited)", callback=not_blank)) -> None:
    """Reject a stored plan: nothing is applied."""
    run(_decide(run_id, approved=False, decision=ApprovalDecision(actor=actor, reason=reason)))


async def _decide(run_id: str, *, approved: bool, decision: ApprovalDecision) -> None:
    handle: WorkflowHandle[Any, Any] = (await temporal()).get_workflow_handle(run_id)
    update = ReconcileAllocations.approve if approved else ReconcileAllocations.reject
    verb = "approve" if approved else "reject"
    try:
        # The SDK types an async update's result as its coroutine; what it returns is the result.
        res = cast(ApprovalResult, await handle.execute_update(update, decision))
    except WorkflowUpdateFailedError as e:
        raise fail(f"{verb} refused: {getattr(e.cause, 'message', e.cause)}") from e
    console.print(f"{run_id}: {'approved' if res.approved else 'rejected'} by {decision.actor}", highlight=False)


# ---------------------------------------------------------------------------- show


@allocations_app.command("show")
def show(allocation: str = typer.Argument(..., metavar="ALLOCATION", help="Allocation id"),
         as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """One allocation: timeline, usage records, debits, meter events, findings and audit."""
    data = read(queries.allocation, allocation)
    if data is None:
        raise fail(f"unknown allocation {allocation!r}")
    if as_json:
        print(json.dumps(data, default=str))
        return
    a = data["allocation"]
    # One line per row (never folded at the terminal width): greppable, and complete.
    lines = [f"allocation {a['allocation_id']} ({a['resource_class']}) customer {a['customer_id']}: {a['status']}"]
    for key, title in SHOW_SECTIONS.items():
        lines.append(f"{title}:" + ("" if data[key] else " (none)"))
        lines += ["  " + "  ".join(f"{k}={_text(v)}" for k, v in r.items() if v is not None) for r in data[key]]
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


# `queries.allocation`'s sections, in the order shown, with their titles.
SHOW_SECTIONS = {"timeline": "timeline", "usage": "usage records", "debits": "debits", "events": "meter events",
                 "findings": "findings", "audit": "audit"}


def _text(v: Any) -> str:
    return v.isoformat() if isinstance(v, datetime) else str(v)


def register(root: typer.Typer) -> None:
    root.add_typer(allocations_app, name="allocations",
                   help="Duration usage: allocations, usage records, debits, payments.")
