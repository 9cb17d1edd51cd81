"""`budget show | set`: the Stripe budget every worker shares (billing/budget.py,
docs/stripe-budget.md). A change reaches every worker at its next Stripe request: the limits
are read from Postgres on each slot.

Exit codes: 0 ok; 1 Postgres did not answer (or the budget tables are missing: run `migrate`);
2 bad input (nothing changed)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation

import typer
from rich.table import Table

from billing import correlation
from billing.budget import BudgetView, read_budget, set_budget
from starter.kit import EXIT_BAD_INPUT, console, database, default_actor, fail, not_blank, run

budget_app = typer.Typer(no_args_is_help=True)


def _rate(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise fail(f"{what}: {text!r} is not a number of requests per second", EXIT_BAD_INPUT) from None
    if not value.is_finite() or value <= 0:
        raise fail(f"{what}: must be a number of requests per second above 0, got {text}", EXIT_BAD_INPUT)
    return value


def _endpoint_limits(pairs: list[str]) -> dict[str, Decimal]:
    limits: dict[str, Decimal] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise fail(f"--endpoint {pair!r}: expected OPERATION=OPS, e.g. meter_event_summaries=25", EXIT_BAD_INPUT)
        if name.strip() == "account":
            raise fail("--endpoint account=...: the account's limit is --account", EXIT_BAD_INPUT)
        limits[name.strip()] = _rate(value, f"--endpoint {name.strip()}")
    return limits


def _print(view: BudgetView, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "reserved_share": str(view.reserved_share), "endpoint_default": str(view.endpoint_default),
            "buckets": [{"bucket": b.name, "limit": str(b.limit), "ours": f"{b.ours:.2f}", "own_bucket": b.own_bucket,
                         "queued_seconds": round(b.queued_seconds, 3), "taken": b.taken,
                         "updated_by": b.updated_by} for b in view.buckets]}))
        return
    table = Table(title=f"Stripe budget (reserved for the application: {view.reserved_share:%}; "
                        f"an endpoint without a row: {view.endpoint_default}/s)")
    for col in ("bucket", "Stripe limit/s", "ours/s", "queued (s)", "slots taken", "changed by"):
        table.add_column(col)
    for b in view.buckets:
        name = f"{b.name} (own bucket)" if b.own_bucket else b.name
        table.add_row(name, str(b.limit), f"{b.ours:.2f}", f"{b.queued_seconds:.2f}", str(b.taken),
                      b.updated_by or "")
    console.print(table)


@budget_app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="One JSON object")) -> None:
    """The account's and each endpoint's limits, the share left to the application, and how far
    ahead each bucket's slots are handed out."""

    async def go() -> BudgetView:
        async with database() as conn:
            return await read_budget(conn)

    _print(run(go()), as_json)


@budget_app.command("set")
def set_(
    account: str | None = typer.Option(None, help="The account's limit, ops/s (Stripe: 100 live, 25 test mode)"),
    endpoint: list[str] = typer.Option([], "--endpoint", metavar="OPERATION=OPS",
                                       help="An endpoint's limit (repeat), e.g. meter_event_summaries=25"),
    endpoint_default: str | None = typer.Option(None, help="The limit of endpoints without their own row, ops/s"),
    reserved_share: float | None = typer.Option(
        None, min=0, max=0.95, help="Share of every limit left to the application's own Stripe traffic (0-0.95)"),
    own_bucket: list[str] = typer.Option(
        [], "--own-bucket", metavar="OPERATION",
        help="An endpoint limited by its own bucket only, not the account's (repeat): live mode's "
             "create_meter_event (1000/s)"),
    in_account: list[str] = typer.Option(
        [], "--in-account", metavar="OPERATION", help="An endpoint counted in the account's bucket again (repeat)"),
    reason: str = typer.Option(..., help="Why (audited)", callback=not_blank),
    actor: str | None = typer.Option(None, help="Who (default $USER; audited)", callback=not_blank),
    as_json: bool = typer.Option(False, "--json", help="One JSON object"),
) -> None:
    """Change the budget for every worker at once (audited as `budget.set`)."""
    limits = _endpoint_limits(endpoint)
    account_rate = _rate(account, "--account") if account is not None else None
    default_rate = _rate(endpoint_default, "--endpoint-default") if endpoint_default is not None else None
    share = Decimal(str(reserved_share)) if reserved_share is not None else None
    own = {name.strip(): True for name in own_bucket} | {name.strip(): False for name in in_account}
    if "account" in own or "" in own:
        raise fail("--own-bucket/--in-account take an endpoint's operation name, e.g. create_meter_event",
                   EXIT_BAD_INPUT)
    if set(map(str.strip, own_bucket)) & set(map(str.strip, in_account)):
        raise fail("an endpoint cannot be both --own-bucket and --in-account", EXIT_BAD_INPUT)
    if account_rate is None and default_rate is None and share is None and not limits and not own:
        raise fail("nothing to change: give --account, --endpoint, --endpoint-default, --reserved-share, "
                   "--own-bucket or --in-account", EXIT_BAD_INPUT)

    async def go() -> BudgetView:
        async with database() as conn:
            return await set_budget(
                conn, actor=actor or default_actor(), reason=reason, account=account_rate, endpoints=limits,
                reserved_share=share, endpoint_default=default_rate, own_bucket=own,
                change_key=correlation.current() or correlation.new_id())

    _print(run(go()), as_json)


def register(root: typer.Typer) -> None:
    root.add_typer(budget_app, name="budget", help="The Stripe budget every worker shares.")
