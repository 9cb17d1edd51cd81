"""Mirror resyncs: `resync-subscriptions` (all, or one customer), `subscriptions sync` (one
customer now, even while auto-healing is paused) and `resync-invoices` (the invoice mirror).

Each waits for the result with a progress line on stderr (none with --json). Exit codes as
every command's (README "Exit codes"): 0 ok, 1 the workflow failed or a fix failed, 2 bad
arguments (including an unknown customer)."""

from __future__ import annotations

import typer
from temporalio.common import WorkflowIDConflictPolicy

from common.types import Mode
from resync.invoices_workflow import ResyncInvoices
from resync.types import (
    InvoiceResyncProgress,
    InvoiceResyncResult,
    ResyncInvoicesInput,
    ResyncProgress,
    ResyncResult,
    ResyncSubscriptionsInput,
)
from resync.workflow import ResyncSubscriptions
from starter.follow import Step, Watch, start_and_follow
from starter.kit import (
    EXIT_FAILED,
    EXIT_OK,
    build,
    choose_mode,
    console,
    counts_table,
    err,
    new_id,
    not_blank,
    run,
)

subscriptions_app = typer.Typer(no_args_is_help=True)
JSON_HELP = "Print the result as one JSON object"
RUN_ID_HELP = "Workflow id (default: generated)"


def resync_subscriptions(
    customer: str | None = typer.Option(None, "--customer", help="Our customer id (default: every subscription)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compare and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Fix local rows from Stripe (audited)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    actor: str = typer.Option("cli", help="Who runs it (audited)", callback=not_blank),
    reason: str | None = typer.Option(None, help="Recorded in every audit row", callback=not_blank),
    run_id: str | None = typer.Option(None, "--id", help=RUN_ID_HELP),
) -> None:
    """Compare every Stripe subscription with billing.subscriptions and fix mismatches."""
    mode = choose_mode(dry_run=dry_run, apply=apply)
    request = build(ResyncSubscriptionsInput, customer=customer, mode=mode, actor=actor, reason=reason)
    raise typer.Exit(run(_resync(request, run_id or new_id("resync-subscriptions", mode.value), as_json)))


@subscriptions_app.command("sync")
def subscriptions_sync(
    customer: str = typer.Option(..., "--customer", help="Our customer id"),
    actor: str = typer.Option("cli", help="Who asks (audited)", callback=not_blank),
    reason: str = typer.Option("manual sync", help="Why (audited)", callback=not_blank),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    run_id: str | None = typer.Option(None, "--id", help=RUN_ID_HELP),
) -> None:
    """Sync one customer's subscriptions from Stripe now (apply; proceeds while auto-healing is paused)."""
    request = build(ResyncSubscriptionsInput, customer=customer, mode=Mode.APPLY, actor=actor, reason=reason,
                    manual=True)
    raise typer.Exit(run(_resync(request, run_id or new_id("subscriptions-sync", customer), as_json)))


async def _resync(request: ResyncSubscriptionsInput, workflow_id: str, as_json: bool) -> int:
    # The same --id while that run goes on follows it; after it finished, it scans again.
    return await start_and_follow(ResyncSubscriptions.run, request, workflow_id, as_json=as_json,
                                  watch=Watch(ResyncProgress, "resync", _step), show=_print_resync,
                                  outcome=lambda r: EXIT_FAILED if r.counts.fix_failures else EXIT_OK,
                                  id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)


def _step(p: ResyncProgress) -> Step:
    c = p.counts
    return Step(f"{p.phase.value}: {p.pages_done} pages, compared {c.compared}, mismatched {c.mismatched}, "
                f"fixed {c.fixed}, missing here {c.missing_local}" + (" (paused)" if p.paused else ""))


def _print_resync(r: ResyncResult) -> None:
    scope = r.customer or "all customers"
    console.print(counts_table(f"{r.run_id} ({r.mode.value}, {scope})", r.counts))
    cc = r.count_check
    console.print(f"active subscriptions: here {cc.active_local_before} -> {cc.active_local_after}, "
                  f"Stripe {cc.active_stripe} ({'match' if cc.matches else 'MISMATCH'})")
    if r.paused:
        err.print("[yellow]auto-healing is paused: observe-only, nothing was written[/yellow]")
    for label, ids in (("mismatched", r.findings.mismatched), ("missing here", r.findings.missing_local),
                       ("missing in Stripe (kept)", r.findings.missing_in_stripe)):
        if ids:
            console.print(f"{label}: " + "; ".join(ids))


def resync_invoices(
    customer: str | None = typer.Option(None, "--customer", help="Our customer id (default: every invoice)"),
    days: int | None = typer.Option(None, "--days", min=1, max=3660,
                                    help="Only invoices created in the last N days (default: all)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compare and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Fix the invoice mirror from Stripe (audited)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    actor: str = typer.Option("cli", help="Who runs it (audited)", callback=not_blank),
    reason: str | None = typer.Option(None, help="Recorded in every audit row", callback=not_blank),
    run_id: str | None = typer.Option(None, "--id", help=RUN_ID_HELP),
) -> None:
    """Compare every Stripe invoice with billing.invoices (status, amounts, status transitions) and fix it."""
    mode = choose_mode(dry_run=dry_run, apply=apply)
    request = build(ResyncInvoicesInput, customer=customer, days=days, mode=mode, actor=actor, reason=reason)
    raise typer.Exit(run(start_and_follow(
        ResyncInvoices.run, request, run_id or new_id("resync-invoices", mode.value), as_json=as_json,
        watch=Watch(InvoiceResyncProgress, "invoice resync", _invoice_step), show=_print_invoices,
        outcome=lambda r: EXIT_FAILED if r.counts.fix_failures else EXIT_OK,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)))


def _invoice_step(p: InvoiceResyncProgress) -> Step:
    c = p.counts
    return Step(f"{p.phase.value}: {p.pages_done} pages, compared {c.compared}, mismatched {c.mismatched}, "
                f"fixed {c.fixed}, missing here {c.missing_local}" + (" (paused)" if p.paused else ""))


def _print_invoices(r: InvoiceResyncResult) -> None:
    scope = (r.customer or "all customers") + (f", last {r.days} days" if r.days else "")
    console.print(counts_table(f"{r.run_id} ({r.mode.value}, {scope})", r.counts))
    if r.paused:
        err.print("[yellow]auto-healing is paused: observe-only, nothing was written[/yellow]")
    for label, ids in (("mismatched", r.findings.mismatched), ("missing here", r.findings.missing_local),
                       ("drafts deleted in Stripe", r.findings.deleted_drafts),
                       ("missing in Stripe (kept)", r.findings.missing_in_stripe)):
        if ids:
            console.print(f"{label}: " + "; ".join(ids))


def register(root: typer.Typer) -> None:
    root.command("resync-invoices")(resync_invoices)
    root.command("resync-subscriptions")(resync_subscriptions)
    root.add_typer(subscriptions_app, name="subscriptions", help="Manual subscription sync (audited workflow).")
