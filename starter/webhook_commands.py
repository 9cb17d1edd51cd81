"""Webhook commands: `webhooks serve`, `replay-webhooks`, `events` (inspect the inbox)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.table import Table
from temporalio.client import WorkflowFailureError

from billing import db
from billing.settings import get_settings
from common.client import connect
from common.types import Mode
from starter.commands import (
    _database_url,
    _fail,
    _run,
    console,
    err,
    follow,
    print_workflow_failure,
)
from webhooks.types import EventStatus, ReplayProgress, ReplayResult, ReplayWebhooksInput

app = typer.Typer(no_args_is_help=True)

REPLAY_WORKFLOW = "ReplayWebhooks"
_RELATIVE = re.compile(r"^(\d+)([dhm])$")


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """`2026-11-01`, `2026-11-01T12:00:00Z` (no zone = UTC) or relative to now: `3d`, `12h`, `30m`."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(value.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        return now - {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a time: use 2026-11-01, 2026-11-01T12:00:00Z or 3d/12h/30m") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@app.command("serve")
def serve(host: str | None = typer.Option(None, help="Default WEBHOOK_HOST"),
          port: int | None = typer.Option(None, help="Default WEBHOOK_PORT")) -> None:
    """Run the Stripe webhook receiver (POST /webhooks/stripe, GET /health/ready)."""
    from webhooks.app import serve as serve_app

    serve_app(get_settings(), _database_url(), host=host, port=port)


def replay_webhooks(
    since: str | None = typer.Option(None, help="Window start (default: --days before --until)"),
    until: str | None = typer.Option(None, help="Window end (default: now)"),
    days: int = typer.Option(3, help="Window length when --since is not given (<= 30)"),
    type_: list[str] = typer.Option([], "--type", help="Only these event types (repeat; `customer.*` alone)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be replayed (default)"),
    apply: bool = typer.Option(False, "--apply", help="Store and process missed events"),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json"),
    actor: str = typer.Option("cli", help="Who runs it (recorded in the workflow input)"),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """Find Stripe events never received or never processed in a window, and process them."""
    if dry_run and apply:
        raise _fail("choose one of --dry-run and --apply", 2)
    try:
        request = ReplayWebhooksInput(
            since=parse_time(since) if since else None, until=parse_time(until) if until else None,
            days=days, types=type_, mode=Mode.APPLY if apply else Mode.DRY_RUN, actor=actor)
    except Exception as e:
        raise _fail(f"invalid arguments: {e}", 2) from e
    workflow_id = run_id or f"replay-webhooks-{request.mode.value}-{uuid.uuid4().hex[:12]}"
    raise typer.Exit(_run(_replay(request, workflow_id, wait=wait, as_json=as_json)))


async def _replay(request: ReplayWebhooksInput, workflow_id: str, *, wait: bool, as_json: bool) -> int:
    client = await connect()
    handle = await client.start_workflow(
        REPLAY_WORKFLOW, request, id=workflow_id, task_queue=get_settings().task_queue,
        result_type=ReplayResult)
    if not wait:
        if as_json:
            print(json.dumps({"workflow_id": workflow_id, "status": "started"}))
        else:
            console.print(f"started {workflow_id}")
        return 0
    status = err.status("starting", spinner="dots") if not as_json else contextlib.nullcontext()
    try:
        with status as spinner:
            def show(p: ReplayProgress) -> None:
                if spinner is not None:
                    spinner.update(f"{p.phase}: Stripe listed {p.counts.seen}, replayed {p.counts.replayed}, "
                                   f"failed {p.counts.failed}")

            result: ReplayResult = await follow(handle, ReplayProgress, show, interval=1.0)
    except WorkflowFailureError as e:
        return print_workflow_failure(workflow_id, e, as_json=as_json)
    if as_json:
        print(result.model_dump_json())
    else:
        _print_replay(result)
    return 1 if result.counts.failed else 0


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


def events(
    status: EventStatus | None = typer.Option(None, help="Only events in this status"),
    type_: str | None = typer.Option(None, "--type", help="Only this type (`customer.*` works)"),
    limit: int = typer.Option(50, min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Inspect the webhook inbox: newest first, with status, deliveries and errors."""
    rows = asyncio.run(_load_events(status, type_, limit))
    if as_json:
        print(json.dumps(rows, default=str))
        return
    summary = asyncio.run(_inbox_summary())
    console.print("inbox: " + (", ".join(f"{k}={v}" for k, v in summary.items()) or "empty"))
    t = Table()
    for col in ("event_id", "type", "created", "status", "source", "deliveries", "attempts", "error"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["event_id"], r["type"], f"{r['created']:%Y-%m-%d %H:%M:%S}", r["status"], r["source"],
                  str(r["deliveries"]), str(r["attempts"]), (r["error"] or "")[:120])
    console.print(t)


async def _load_events(status: EventStatus | None, type_: str | None, limit: int) -> list[dict[str, Any]]:
    conn = await db.connect(_database_url())
    try:
        rows = await conn.fetch(
            """
            SELECT event_id, type, created, status, source, deliveries, attempts, error, received_at,
                   processed_at
            FROM billing.stripe_events
            WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR type LIKE $2)
            ORDER BY created DESC, event_id DESC LIMIT $3
            """, status.value if status else None, type_.replace("*", "%") if type_ else None, limit)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def _inbox_summary() -> dict[str, int]:
    conn = await db.connect(_database_url())
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM billing.stripe_events GROUP BY status ORDER BY status")
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="webhooks", help="Stripe webhook receiver.")
    root.command("replay-webhooks")(replay_webhooks)
    root.command("events")(events)
