"""Credits: `repair-credits` (one grant per purchase, balances = ledger, the ledger checks) and
`credits adjust` (a manual credit or debit, audited).

Each waits for the result (repair-credits with a progress line on stderr, none with --json).
Exit codes as every command's (README "Exit codes"): 0 ok (also an adjustment whose key was
applied before: nothing is written and the output says so), 1 the workflow failed or refused
part of its work (a refused debit; an apply that left a customer untouched because its ledger
sums below zero), 2 bad arguments (amount 0 or out of range, an unknown customer, an
idempotency key already used for another adjustment).

Idempotency: `credits adjust` applies once per idempotency key (`--idempotency-key`, default
`credits.types.default_adjust_key`: customer, amount, reason and actor); its workflow id is
`adjust-credits-<key>` unless `--id` is given. `repair-credits --id X` while X runs follows that
run; after it finished it scans again, and finds nothing to do unless something drifted since."""

from __future__ import annotations

import typer
from temporalio.common import WorkflowIDConflictPolicy

from credits.adjust_workflow import AdjustCredits
from credits.repair_workflow import RepairCredits
from credits.types import (
    AdjustCreditsInput,
    AdjustCreditsResult,
    RepairCreditsInput,
    RepairProgress,
    RepairResult,
    default_adjust_key,
)
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

credits_app = typer.Typer(no_args_is_help=True)
JSON_HELP = "Print the result as one JSON object"
RUN_ID_HELP = "Workflow id (default: generated)"
# billing.credit_ledger.amount and credit_balances.balance are bigint (migrations/0001_core.sql).
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def repair_credits(
    customer: str | None = typer.Option(None, "--customer", help="Our customer id (default: all)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Grant missing credits, repair balances (audited)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    days: int = typer.Option(30, help="Stripe events window in days (<= 30, Stripe's retention)"),
    actor: str = typer.Option("cli", help="Who runs it (audited)", callback=not_blank),
    run_id: str | None = typer.Option(None, "--id", help=RUN_ID_HELP),
) -> None:
    """One grant per completed credit purchase, balances = ledger, and the ledger consistency checks."""
    mode = choose_mode(dry_run=dry_run, apply=apply)
    request = build(RepairCreditsInput, customer=customer, mode=mode, actor=actor, days=days)
    raise typer.Exit(run(start_and_follow(
        RepairCredits.run, request, run_id or new_id("repair-credits", mode.value), as_json=as_json,
        watch=Watch(RepairProgress, "repair", _step), show=_print_repair, outcome=_repair_outcome,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)))


def _repair_outcome(r: RepairResult) -> int:
    """1 when the apply refused part of its work (a customer left untouched)."""
    return EXIT_FAILED if r.counts.refused_customers or r.counts.grants_refused else EXIT_OK


def _step(p: RepairProgress) -> Step:
    c = p.counts
    return Step(f"{p.phase.value}: purchases {c.purchases}, missing grants {c.missing_grants}, "
                f"balances checked {c.customers_checked}" + (" (paused)" if p.paused else ""))


def _print_repair(result: RepairResult) -> None:
    console.print(counts_table(f"{result.run_id} ({result.mode.value}, {result.customer or 'all customers'})",
                               result.counts))
    console.print(counts_table("ledger checks", result.checks))
    if result.paused:
        err.print("[yellow]auto-healing is paused: observe-only, nothing was written[/yellow]")
    for refused in result.findings.refused:
        err.print(f"[red]refused:[/red] {refused}")
    for label, items in result.findings.model_dump(exclude={"refused"}).items():
        if items:
            console.print(f"{label}: " + "; ".join(items))
    for label, items in (("paid invoices missing here", result.checks.invoice_sample),
                         ("usage never pushed", result.checks.usage_sample)):
        if items:
            console.print(f"{label}: " + "; ".join(items))


@credits_app.command("adjust")
def credits_adjust(
    customer: str = typer.Option(..., "--customer", help="Our customer id"),
    amount: int = typer.Option(..., "--amount", min=BIGINT_MIN, max=BIGINT_MAX,
                               help="Minor units: > 0 credits, < 0 debits (a 64-bit integer, as stored)"),
    reason: str = typer.Option(..., "--reason", help="Why (audited)", callback=not_blank),
    actor: str = typer.Option("cli", help="Who (audited)", callback=not_blank),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", callback=not_blank,
        help="The adjustment's identity: the same key applies once (default: from customer, amount, reason "
             "and actor, so the same command twice applies once)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: adjust-credits-<key>)"),
) -> None:
    """Credit or debit a customer's balance through the AdjustCredits workflow (audited, once per key)."""
    key = idempotency_key or default_adjust_key(customer, amount, reason, actor)
    request = build(AdjustCreditsInput, customer=customer, amount=amount, reason=reason, actor=actor,
                    idempotency_key=key)
    raise typer.Exit(run(start_and_follow(
        AdjustCredits.run, request, run_id or f"adjust-credits-{key}", as_json=as_json, show=_print_adjust,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)))


def _print_adjust(r: AdjustCreditsResult) -> None:
    if r.already_applied:
        console.print(f"{r.customer}: already applied ({r.source}, ledger row {r.ledger_id}); nothing written, "
                      f"balance {r.balance_after}")
        return
    console.print(f"{r.customer}: {r.balance_before} -> {r.balance_after} "
                  f"({r.amount:+d}, {r.source}, by {r.actor}: {r.reason})")


def register(root: typer.Typer) -> None:
    root.command("repair-credits")(repair_credits)
    root.add_typer(credits_app, name="credits", help="Manual credit adjustments (audited workflows).")
