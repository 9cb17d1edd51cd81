"""Resync commands: `resync-subscriptions`, `repair-credits`, `credits adjust`, `subscriptions sync`.

Each starts a workflow and (by default) waits for its result with a progress bar on stderr
(none with --json). Exit codes: 0 ok, 1 the workflow failed (or a fix failed), 2 bad arguments
(including an unknown customer)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import typer
from pydantic import BaseModel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import WorkflowFailureError, WorkflowHandle

from billing.settings import get_settings
from common.client import connect
from common.paged import ErrorType
from common.types import Mode
from credits.types import (
    AdjustCreditsInput,
    AdjustCreditsResult,
    RepairCreditsInput,
    RepairProgress,
    RepairResult,
)
from resync.types import ResyncProgress, ResyncResult, ResyncSubscriptionsInput
from starter.commands import _fail, _run, console, err, follow

RESYNC_WORKFLOW = "ResyncSubscriptions"
REPAIR_WORKFLOW = "RepairCredits"
ADJUST_WORKFLOW = "AdjustCredits"
EXIT_OK, EXIT_FAILED, EXIT_BAD_ARGS = 0, 1, 2
POLL_SECONDS = 0.5
# Failures that are the caller's mistake, not the workflow's: exit 2 like any bad argument.
BAD_ARGUMENT_ERRORS = {ErrorType.UNKNOWN_CUSTOMER.value}

credits_app = typer.Typer(no_args_is_help=True)
subscriptions_app = typer.Typer(no_args_is_help=True)


def _mode(dry_run: bool, apply: bool) -> Mode:
    if dry_run and apply:
        raise _fail("choose one of --dry-run and --apply", EXIT_BAD_ARGS)
    return Mode.APPLY if apply else Mode.DRY_RUN


def _build(model: type[BaseModel], **fields: Any) -> Any:
    try:
        return model(**fields)
    except Exception as e:  # pydantic: a precise message, exit 2
        raise _fail(f"invalid arguments: {e}", EXIT_BAD_ARGS) from e


async def _execute(workflow: str, request: BaseModel, workflow_id: str, result_type: type, *, as_json: bool,
                   progress_type: type | None = None, describe: Callable[[Any], str] | None = None) -> Any:
    """Start, wait with a progress line on stderr; returns the result or an exit code."""
    client = await connect()
    handle: WorkflowHandle = await client.start_workflow(
        workflow, request, id=workflow_id, task_queue=get_settings().task_queue, result_type=result_type)
    try:
        if progress_type is None or describe is None:
            return await handle.result()
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=err,
                      disable=as_json, transient=False) as bar:
            task = bar.add_task(f"{workflow} starting", total=None)
            return await follow(handle, progress_type, lambda p: bar.update(task, description=describe(p)),
                                interval=POLL_SECONDS)
    except WorkflowFailureError as e:
        cause = e.cause
        message = getattr(cause, "message", None) or str(cause)
        error_type = getattr(cause, "type", None)
        if as_json:
            print(json.dumps({"workflow_id": workflow_id, "status": "failed", "error": message, "type": error_type}))
        else:
            err.print(f"[red]error:[/red] {workflow_id} failed: {message}")
        return EXIT_BAD_ARGS if error_type in BAD_ARGUMENT_ERRORS else EXIT_FAILED


def _counts_table(title: str, counts: BaseModel) -> Table:
    t = Table(title=title)
    t.add_column("count")
    t.add_column("value", justify="right")
    for name, value in counts.model_dump().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            continue
        t.add_row(name, str(value))
    return t


# ---------------------------------------------------------------------------- subscriptions


def _describe_resync(p: ResyncProgress) -> str:
    c = p.counts
    return (f"{p.phase.value}: {p.pages_done} pages, compared {c.compared}, mismatched {c.mismatched}, "
            f"fixed {c.fixed}, missing here {c.missing_local}" + (" (paused)" if p.paused else ""))


def resync_subscriptions(
    customer: str | None = typer.Option(None, "--customer", help="Our customer id (default: every subscription)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compare and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Fix local rows from Stripe (audited)"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object"),
    actor: str = typer.Option("cli", help="Who runs it (audited)"),
    reason: str | None = typer.Option(None, help="Recorded in every audit row"),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """Compare every Stripe subscription with billing.subscriptions and fix mismatches."""
    mode = _mode(dry_run, apply)
    request = _build(ResyncSubscriptionsInput, customer=customer, mode=mode, actor=actor, reason=reason)
    workflow_id = run_id or f"resync-subscriptions-{mode.value}-{uuid.uuid4().hex[:12]}"
    raise typer.Exit(_run(_resync(request, workflow_id, as_json)))


async def _resync(request: ResyncSubscriptionsInput, workflow_id: str, as_json: bool) -> int:
    result = await _execute(RESYNC_WORKFLOW, request, workflow_id, ResyncResult, as_json=as_json,
                            progress_type=ResyncProgress, describe=_describe_resync)
    if isinstance(result, int):
        return result
    if as_json:
        print(result.model_dump_json())
    else:
        _print_resync(result)
    return EXIT_FAILED if result.counts.fix_failures else EXIT_OK


def _print_resync(r: ResyncResult) -> None:
    scope = r.customer or "all customers"
    console.print(_counts_table(f"{r.run_id} ({r.mode.value}, {scope})", r.counts))
    cc = r.count_check
    console.print(f"active subscriptions: here {cc.active_local_before} -> {cc.active_local_after}, "
                  f"Stripe {cc.active_stripe} ({'match' if cc.matches else 'MISMATCH'})")
    if r.paused:
        err.print("[yellow]auto-healing is paused: observe-only, nothing was written[/yellow]")
    for label, ids in (("mismatched", r.findings.mismatched), ("missing here", r.findings.missing_local),
                       ("missing in Stripe (kept)", r.findings.missing_in_stripe)):
        if ids:
            console.print(f"{label}: " + "; ".join(ids))


@subscriptions_app.command("sync")
def subscriptions_sync(
    customer: str = typer.Option(..., "--customer", help="Our customer id"),
    actor: str = typer.Option("cli", help="Who asks (audited)"),
    reason: str = typer.Option("manual sync", help="Why (audited)"),
    as_json: bool = typer.Option(False, "--json"),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """Sync one customer's subscriptions from Stripe now (apply; proceeds while auto-healing is paused)."""
    request = _build(ResyncSubscriptionsInput, customer=customer, mode=Mode.APPLY, actor=actor, reason=reason,
                     manual=True)
    workflow_id = run_id or f"subscriptions-sync-{customer}-{uuid.uuid4().hex[:12]}"
    raise typer.Exit(_run(_resync(request, workflow_id, as_json)))


# ---------------------------------------------------------------------------- credits


def _describe_repair(p: RepairProgress) -> str:
    c = p.counts
    return (f"{p.phase.value}: purchases {c.purchases}, missing grants {c.missing_grants}, "
            f"balances checked {c.customers_checked}" + (" (paused)" if p.paused else ""))


def repair_credits(
    customer: str | None = typer.Option(None, "--customer", help="Our customer id (default: all)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Grant missing credits, repair balances (audited)"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object"),
    days: int = typer.Option(30, help="Stripe events window in days (<= 30, Stripe's retention)"),
    actor: str = typer.Option("cli", help="Who runs it (audited)"),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """One grant per completed credit purchase, balances = ledger, and the ledger consistency checks."""
    mode = _mode(dry_run, apply)
    request = _build(RepairCreditsInput, customer=customer, mode=mode, actor=actor, days=days)
    workflow_id = run_id or f"repair-credits-{mode.value}-{uuid.uuid4().hex[:12]}"
    raise typer.Exit(_run(_repair(request, workflow_id, as_json)))


async def _repair(request: RepairCreditsInput, workflow_id: str, as_json: bool) -> int:
    result = await _execute(REPAIR_WORKFLOW, request, workflow_id, RepairResult, as_json=as_json,
                            progress_type=RepairProgress, describe=_describe_repair)
    if isinstance(result, int):
        return result
    if as_json:
        print(result.model_dump_json())
        return EXIT_OK
    console.print(_counts_table(f"{result.run_id} ({result.mode.value}, {result.customer or 'all customers'})",
                                result.counts))
    console.print(_counts_table("ledger checks", result.checks))
    if result.paused:
        err.print("[yellow]auto-healing is paused: observe-only, nothing was written[/yellow]")
    for label, items in result.findings.model_dump().items():
        if items:
            console.print(f"{label}: " + "; ".join(items))
    for label, items in (("paid invoices missing here", result.checks.invoice_sample),
                         ("usage never pushed", result.checks.usage_sample)):
        if items:
            console.print(f"{label}: " + "; ".join(items))
    return EXIT_OK


@credits_app.command("adjust")
def credits_adjust(
    customer: str = typer.Option(..., "--customer", help="Our customer id"),
    amount: int = typer.Option(..., "--amount", help="Minor units: > 0 credits, < 0 debits"),
    reason: str = typer.Option(..., "--reason", help="Why (audited)"),
    actor: str = typer.Option("cli", help="Who (audited)"),
    as_json: bool = typer.Option(False, "--json"),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """Credit or debit a customer's balance through the AdjustCredits workflow (audited)."""
    request = _build(AdjustCreditsInput, customer=customer, amount=amount, reason=reason, actor=actor)
    workflow_id = run_id or f"adjust-credits-{uuid.uuid4().hex[:12]}"
    raise typer.Exit(_run(_adjust(request, workflow_id, as_json)))


async def _adjust(request: AdjustCreditsInput, workflow_id: str, as_json: bool) -> int:
    result = await _execute(ADJUST_WORKFLOW, request, workflow_id, AdjustCreditsResult, as_json=as_json)
    if isinstance(result, int):
        return result
    if as_json:
        print(result.model_dump_json())
    else:
        console.print(f"{result.customer}: {result.balance_before} -> {result.balance_after} "
                      f"({result.amount:+d}, {result.source}, by {result.actor}: {result.reason})")
    return EXIT_OK


def register(root: typer.Typer) -> None:
    root.command("resync-subscriptions")(resync_subscriptions)
    root.command("repair-credits")(repair_credits)
    root.add_typer(credits_app, name="credits", help="Manual credit adjustments (audited workflows).")
    root.add_typer(subscriptions_app, name="subscriptions", help="Manual subscription sync (audited workflow).")
