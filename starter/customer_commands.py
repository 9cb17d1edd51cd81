"""One customer end to end: `customer show ID` (Stripe and Postgres side by side, mismatches
highlighted) and `customer repair ID [--apply]` (one audited workflow fixing that customer's
subscriptions, invoices, credits and usage).

ID is our customer id or the Stripe customer id. Exit codes as every command's (README "Exit
codes"): show: 0 (mismatches or not), 1 unknown customer, 2 a malformed id; repair: 0 done (or
paused: nothing written), 1 a step failed or an apply left mismatches, or a repair of the
customer is already running, 2 a malformed or unknown id (nothing started)."""

from __future__ import annotations

import json

import typer
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from billing.customers import find_customer
from common.types import Mode
from customer.inspect_workflow import InspectCustomer
from customer.repair_workflow import RepairCustomer
from customer.types import (
    STRIPE_CUSTOMER_PREFIX,
    InspectCustomerInput,
    RepairCustomerInput,
    RepairCustomerResult,
    RepairProgress,
    RepairStep,
)
from starter.customer_view import print_repair, print_view, view_json
from starter.follow import Step, Watch, start_and_follow
from starter.kit import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    build,
    choose_mode,
    database,
    default_actor,
    fail,
    new_id,
    not_blank,
    run,
    run_link,
)

customer_app = typer.Typer(no_args_is_help=True)
ID_HELP = "Our customer id, or the Stripe customer id (cus_...)"
JSON_HELP = "Print the result as one JSON object"


@customer_app.command("show")
def show(
    customer: str = typer.Argument(..., help=ID_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON document, with a `mismatches` list"),
    invoices: int = typer.Option(10, "--invoices", min=1, max=100, help="The latest N invoices of each side"),
    events: int = typer.Option(20, "--events", min=1, max=100, help="The latest N inbox events"),
    audit_rows: int = typer.Option(20, "--audit", min=1, max=100, help="The latest N audit rows"),
) -> None:
    """Stripe and Postgres side by side for one customer, every domain, mismatches highlighted."""
    request = build(InspectCustomerInput, customer=customer, invoices=invoices, events=events, audit_rows=audit_rows)
    raise typer.Exit(run(_show(request, as_json)))


async def _show(request: InspectCustomerInput, as_json: bool) -> int:
    # Only a Stripe id can name a customer Postgres does not know (its Stripe side is shown).
    if not request.customer.startswith(STRIPE_CUSTOMER_PREFIX):
        async with database() as conn:
            if await find_customer(conn, request.customer) is None:
                raise fail(f"unknown customer: {request.customer}", EXIT_FAILED)
    return await start_and_follow(InspectCustomer.run, request, new_id("customer-show"), as_json=as_json,
                                  show=print_view, to_json=view_json)


@customer_app.command("repair")
def repair(
    customer: str = typer.Argument(..., help=ID_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Find and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Fix every domain (audited, one row per fix)"),
    actor: str | None = typer.Option(None, help="Who repairs (audited; default BILLING_ACTOR or USER)",
                                     callback=not_blank),
    reason: str | None = typer.Option(None, help="Recorded in every audit row", callback=not_blank),
    settle_seconds: int | None = typer.Option(None, "--settle-seconds", min=0, max=604800,
                                              help="Usage pushes are verified after this (default RECON_SETTLE_SECONDS)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fix one customer's subscriptions, invoices, credits and usage in one audited workflow (dry-run by default)."""
    mode = choose_mode(dry_run=dry_run, apply=apply)
    request = build(RepairCustomerInput, customer=customer, mode=mode, actor=actor or default_actor(),
                    reason=reason, settle_seconds=settle_seconds)
    raise typer.Exit(run(_repair(request, as_json)))


def repair_workflow_id(customer_id: str) -> str:
    """One id per customer: a second repair of the same customer cannot start while one runs."""
    return f"customer-repair-{customer_id}"


async def _repair(request: RepairCustomerInput, as_json: bool) -> int:
    async with database() as conn:
        row = await find_customer(conn, request.customer)
    if row is None or not row["stripe_customer_id"]:
        why = "" if row is None else " (it has no Stripe customer id)"
        raise fail(f"unknown customer: {request.customer}{why}; nothing was started", EXIT_BAD_INPUT)
    customer_id = row["customer_id"]
    workflow_id = repair_workflow_id(customer_id)
    try:
        return await start_and_follow(
            RepairCustomer.run, request.model_copy(update={"customer": customer_id}), workflow_id, as_json=as_json,
            watch=Watch(RepairProgress, f"customer repair {customer_id}", _step), show=print_repair,
            to_json=_repair_json, outcome=_outcome, id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
    except WorkflowAlreadyStartedError:
        message = f"a repair of {customer_id} is already running: {workflow_id} ({run_link(workflow_id)})"
        if as_json:
            print(json.dumps({"workflow_id": workflow_id, "status": "already_running", "error": message}))
            return EXIT_FAILED
        raise fail(message) from None


def _step(p: RepairProgress) -> Step:
    done = "; ".join(f"{s.step.value}: {s.summary}" + (" (paused)" if s.paused else "") for s in p.steps)
    current = f" [{p.current_workflow_id}]" if p.current_workflow_id else ""
    return Step(f"{p.phase}{current}" + (f" | {done}" if done else ""), done=len(p.steps), total=len(RepairStep))


def _outcome(r: RepairCustomerResult) -> int:
    if r.failed or (r.mode == Mode.APPLY and not r.paused and r.after):
        return EXIT_FAILED
    return EXIT_OK


def _repair_json(r: RepairCustomerResult) -> dict:
    doc = r.model_dump(mode="json")
    for row, out in zip(r.fixes, doc["fixes"], strict=True):
        out["ui_link"] = run_link(row.workflow_id, row.run_id)
    doc["failed"] = r.failed
    return doc


def register(root: typer.Typer) -> None:
    root.add_typer(customer_app, name="customer", help="One customer end to end: show (Stripe vs local), repair.")
