"""Webhook commands: `webhooks serve`, `replay-webhooks`, `events` (inspect the inbox) and
`events dismiss` (an operator dismisses a failed event: DismissStripeEvent, audited, once per
event; exit 2 for an event that did not fail, 1 for one the inbox does not hold)."""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.table import Table
from temporalio.common import WorkflowIDConflictPolicy

from billing.settings import get_settings
from common.types import Mode
from starter import queries
from starter.follow import Step, Watch, start_and_follow
from starter.kit import (
    EXIT_FAILED,
    EXIT_OK,
    build,
    choose_mode,
    console,
    database_url,
    default_actor,
    err,
    moment,
    new_id,
    not_blank,
    parse_time,
    read,
    run,
)
from webhooks.dismiss_workflow import DismissStripeEvent, workflow_id_for
from webhooks.replay_workflow import ReplayWebhooks
from webhooks.types import (
    DismissEventInput,
    DismissEventResult,
    EventStatus,
    ReplayProgress,
    ReplayResult,
    ReplayWebhooksInput,
)

__all__ = ["parse_time", "register"]  # parse_time: kept importable from here

app = typer.Typer(no_args_is_help=True)
events_app = typer.Typer()
JSON_HELP = "Print one JSON object instead of tables"


@app.command("serve")
def serve(host: str | None = typer.Option(None, help="Default WEBHOOK_HOST"),
          port: int | None = typer.Option(None, help="Default WEBHOOK_PORT")) -> None:
    """Run the Stripe webhook receiver (POST /webhooks/stripe, GET /health/ready)."""
    from webhooks.app import serve as serve_app

    serve_app(get_settings(), database_url(), host=host, port=port)


def replay_webhooks(
    since: datetime | None = typer.Option(None, parser=moment, help="Window start (default: --days before --until)"),
    until: datetime | None = typer.Option(None, parser=moment, help="Window end (default: now)"),
    days: int = typer.Option(3, help="Window length when --since is not given (<= 30)"),
    type_: list[str] = typer.Option([], "--type", help="Only these event types (repeat; `customer.*` alone)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be replayed (default)"),
    apply: bool = typer.Option(False, "--apply", help="Store and process missed events"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the result, with a progress line"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    actor: str = typer.Option("cli", help="Who runs it (recorded in the workflow input)", callback=not_blank),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """Find Stripe events never received or never processed in a window, and process them."""
    mode = choose_mode(dry_run=dry_run, apply=apply)
    request = build(ReplayWebhooksInput, since=since, until=until, days=days, types=type_, mode=mode, actor=actor)
    workflow_id = run_id or new_id("replay-webhooks", request.mode.value)
    raise typer.Exit(run(start_and_follow(
        ReplayWebhooks.run, request, workflow_id, as_json=as_json, wait=wait,
        watch=Watch(ReplayProgress, "replay", _step, interval=1.0), show=_print_replay,
        outcome=lambda r: EXIT_FAILED if r.counts.failed else EXIT_OK)))


def _step(p: ReplayProgress) -> Step:
    return Step(f"{p.phase}: Stripe listed {p.counts.seen}, replayed {p.counts.replayed}, failed {p.counts.failed}")


def _print_replay(r: ReplayResult) -> None:
    for w in r.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    t = Table(title=f"{r.workflow_id} ({r.mode.value}) {r.since:%Y-%m-%d %H:%M}..{r.until:%Y-%m-%d %H:%M} UTC")
    t.add_column("count")
    t.add_column("events", justify="right")
    for name in r.counts.model_fields:
        t.add_row(name, str(getattr(r.counts, name)))
    console.print(t)
    if r.mode == Mode.DRY_RUN and r.sample:
        console.print(f"would replay ({len(r.sample)} shown): " + ", ".join(r.sample[:20]))
    for f in r.failures:
        err.print(f"[red]failed:[/red] {f}")


@events_app.callback(invoke_without_command=True)
def events(
    ctx: typer.Context,
    status: EventStatus | None = typer.Option(None, help="Only events in this status"),
    type_: str | None = typer.Option(None, "--type", help="Only this type (`customer.*` works)"),
    limit: int = typer.Option(50, min=1, max=10_000, help="How many, newest first"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Inspect the webhook inbox: newest first, with status, deliveries and errors
    (`events dismiss EVT`: dismiss a failed event)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = read(queries.events, status=status.value if status else None,
                type_pattern=type_.replace("*", "%") if type_ else None, limit=limit)
    if as_json:
        print(json.dumps(rows, default=str))
        return
    summary = read(queries.inbox_counts)
    console.print("inbox: " + (", ".join(f"{k}={v}" for k, v in summary.items()) or "empty"))
    t = Table()
    for col in ("event_id", "type", "created", "status", "source", "deliveries", "attempts", "error"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["event_id"], r["type"], f"{r['created']:%Y-%m-%d %H:%M:%S}", r["status"], r["source"],
                  str(r["deliveries"]), str(r["attempts"]), (r["error"] or "")[:120])
    console.print(t)


@events_app.command("dismiss")
def dismiss(
    event_id: str = typer.Argument(..., metavar="EVT", help="The event id (evt_...)"),
    reason: str = typer.Option(..., help="Why it is dismissed (audited)", callback=not_blank),
    actor: str | None = typer.Option(None, help="Who (default $BILLING_ACTOR, else $USER; audited)",
                                     callback=not_blank),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Dismiss a failed webhook event: replays and the hourly schedule skip it from now on (audited)."""
    request = build(DismissEventInput, event_id=event_id, actor=actor or default_actor(), reason=reason)
    raise typer.Exit(run(start_and_follow(
        DismissStripeEvent.run, request, workflow_id_for(event_id), as_json=as_json, show=_print_dismissed,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)))


def _print_dismissed(r: DismissEventResult) -> None:
    when = f"{r.dismissed_at:%Y-%m-%d %H:%M:%S} UTC"
    if r.already_dismissed:
        console.print(f"{r.event_id} ({r.type}): already dismissed by {r.dismissed_by} at {when}: {r.reason}; "
                      "nothing changed")
    else:
        console.print(f"{r.event_id} ({r.type}): dismissed by {r.dismissed_by} at {when}: {r.reason}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="webhooks", help="Stripe webhook receiver.")
    root.command("replay-webhooks")(replay_webhooks)
    root.add_typer(events_app, name="events")
