"""`backfill`: catch up after an outage, one reconciliation per day of a range."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import typer
from rich.table import Table
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from backfill.types import BackfillProgress, BackfillResult, CatchUpBackfillInput
from backfill.workflow import CatchUpBackfill
from common.types import Mode
from starter.follow import Step, Watch, start_and_follow
from starter.kit import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    build,
    console,
    day,
    default_actor,
    err,
    fail,
    not_blank,
    run,
)


def backfill(
    start_date: date = typer.Option(..., parser=day, help="First UTC day (YYYY-MM-DD)"),
    end_date: date = typer.Option(..., parser=day, help="Last UTC day, inclusive"),
    apply: bool = typer.Option(False, "--apply", help="Correct drift (default: dry-run)"),
    concurrency: int = typer.Option(2, help="Days reconciled at once (1 to 16)"),
    customer: list[str] = typer.Option([], help="Only these customers (repeat)"),
    meter: list[str] = typer.Option([], help="Only these meters (repeat)"),
    replay: bool = typer.Option(True, "--replay/--no-replay", help="Replay webhooks over the range"),
    resync: bool = typer.Option(True, "--resync/--no-resync", help="Resync subscriptions afterwards"),
    actor: str | None = typer.Option(None, help="Who runs it (default $USER)", callback=not_blank),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the result, with a progress bar"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables"),
) -> None:
    """Catch up after an outage: reconcile every day of a range, replay webhooks, resync.

    One child run per day, then a webhook replay and a subscription resync over the range.
    Re-running the same range does no duplicate work."""
    request = build(CatchUpBackfillInput, start_date=start_date, end_date=end_date,
                    mode=Mode.APPLY if apply else Mode.DRY_RUN, customers=customer, meters=meter,
                    max_concurrent_days=concurrency, replay_webhooks=replay, resync_subscriptions=resync,
                    actor=actor or default_actor())
    if request.start_date > datetime.now(UTC).date():
        raise fail(f"invalid arguments: start_date {request.start_date} is in the future", EXIT_BAD_INPUT)
    workflow_id = f"backfill-{request.start_date}-{request.end_date}-{request.mode.value}"
    raise typer.Exit(run(_backfill(request, workflow_id, wait=wait, as_json=as_json)))


async def _backfill(request: CatchUpBackfillInput, workflow_id: str, *, wait: bool, as_json: bool) -> int:
    total = (request.end_date - request.start_date).days + 1
    return await start_and_follow(
        CatchUpBackfill.run, request, workflow_id, as_json=as_json, wait=wait,
        watch=Watch(BackfillProgress, "days", lambda p: _step(p, total), total=total),
        show=lambda r: _print_backfill(workflow_id, r),
        outcome=lambda r: EXIT_FAILED if r.failed_days else EXIT_OK,
        # The same range again joins the run in flight, or starts anew and skips the days done.
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)


def _step(p: BackfillProgress, total: int) -> Step:
    in_flight = f" (in flight: {', '.join(map(str, p.days_in_flight))})" if p.days_in_flight else ""
    return Step(p.phase + in_flight, done=p.days_done, total=p.days_total or total)


def _print_backfill(workflow_id: str, result: BackfillResult) -> None:
    t = Table(title=f"{workflow_id}: {result.start_date}..{result.end_date} ({result.mode.value})")
    for col in ("day", "outcome", "run", "drift", "pushed", "error"):
        t.add_column(col, overflow="fold")
    for d in result.days:
        t.add_row(str(d.day), d.outcome.value, d.run_id, str(d.counts.drift_count if d.counts else "-"),
                  str(d.counts.corrections_pushed if d.counts else "-"), d.error or "")
    console.print(t)
    console.print(f"webhook replay: {_summary(result.replay)}")
    console.print(f"subscription resync: {_summary(result.resync)}")
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")


def _summary(part: dict | None) -> str:
    if not part:
        return "-"
    if "skipped" in part or "failed" in part:
        return ", ".join(f"{k}: {v}" for k, v in part.items())
    counts = part.get("counts") or {}
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or json.dumps(part)[:200]


def register(app: typer.Typer) -> None:
    app.command("backfill")(backfill)
