"""`checks`: run the daily checks now (the DailyChecks workflow) and print each check with
pass/fail and what it found; `checks --last`: the last stored results, without running.

Exit codes (README "Exit codes"): 0 every check passed; 1 a check failed (or could not run),
the workflow failed, or `--last` with no result stored yet; 2 bad arguments."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from checks import store
from checks.types import CheckName, CheckResult, DailyChecksInput, DailyChecksProgress
from checks.workflow import DailyChecks
from common.types import STRIPE_EVENT_RETENTION_DAYS
from starter.follow import Step, Watch, start_and_follow
from starter.kit import EXIT_FAILED, EXIT_OK, build, console, fail, new_id, read, run


def checks(
    last: bool = typer.Option(False, "--last", help="Show the last stored results instead of running the checks"),
    webhook_days: int = typer.Option(STRIPE_EVENT_RETENTION_DAYS, min=1, max=STRIPE_EVENT_RETENTION_DAYS,
                                     help="Days of Stripe's events compared with the inbox"),
    webhook_type: list[str] = typer.Option([], "--webhook-type",
                                           help="Only these event types (repeat; `customer.*` works)"),
    stale_days: int | None = typer.Option(None, min=1, max=400,
                                          help="Stale counter threshold in days (default CHECKS_STALE_COUNTER_DAYS)"),
    backlog_minutes: int | None = typer.Option(None, min=1, max=10080,
                                               help="Inbox backlog threshold (default CHECKS_BACKLOG_MINUTES)"),
    grace_minutes: int | None = typer.Option(
        None, min=0, max=10080, help="Leave out events, subscriptions and usage younger than this "
                                     "(default CHECKS_BACKLOG_MINUTES)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables"),
) -> None:
    """Run the daily checks: active subscriptions vs Stripe, webhook gaps per day and type,
    usage without counters, stale counters, inbox backlog. Exit 1 when a check fails."""
    if last:
        rows = read(store.last_results)
        if not rows:
            raise fail("no daily checks result stored yet (run `billing-recon checks`)")
        results = [store.to_result(r) for r in rows]
        if as_json:
            print(json.dumps({"checks": [_json(r, row) for r, row in zip(results, rows, strict=True)],
                              "passed": all(r.passed for r in results)}, default=str))
        else:
            _print(results, title="last daily checks",
                   when={r.check: f"{row['run_id']} at {row['finished_at']:%Y-%m-%d %H:%M} UTC"
                         for r, row in zip(results, rows, strict=True)})
        raise typer.Exit(EXIT_OK if all(r.passed for r in results) else EXIT_FAILED)
    request = build(DailyChecksInput, webhook_days=webhook_days, webhook_types=webhook_type,
                    stale_counter_days=stale_days, backlog_minutes=backlog_minutes, grace_minutes=grace_minutes)
    workflow_id = new_id("daily-checks")
    raise typer.Exit(run(start_and_follow(
        DailyChecks.run, request, workflow_id, as_json=as_json,
        watch=Watch(DailyChecksProgress, "checks", _step, total=len(CheckName)),
        show=lambda r: _print(r.checks, title=f"{r.run_id}: daily checks"),
        to_json=lambda r: {**r.model_dump(mode="json"), "passed": r.passed},
        outcome=lambda r: EXIT_OK if r.passed else EXIT_FAILED)))


def _step(p: DailyChecksProgress) -> Step:
    return Step(p.phase, done=len(p.done), total=p.total)


def _json(result: CheckResult, row: dict[str, Any]) -> dict[str, Any]:
    return {**result.model_dump(mode="json"), "run_id": row["run_id"], "finished_at": row["finished_at"]}


def _print(results: list[CheckResult], *, title: str, when: dict[CheckName, str] | None = None) -> None:
    t = Table(title=title)
    for col in ("check", "result", "summary", *(["run"] if when else [])):
        t.add_column(col, overflow="fold")
    for r in results:
        mark = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        t.add_row(r.check.value, mark, escape(r.summary), *([when.get(r.check, "")] if when else []))
    console.print(t)
    for r in results:
        for item in r.items:
            console.print(f"  {r.check.value}: {escape(item.key)}: {escape(item.detail)}", soft_wrap=True)
    failed = [r.check.value for r in results if not r.passed]
    console.print(f"[red]failed: {', '.join(failed)}[/red]" if failed else "[green]all checks passed[/green]")


def register(app: typer.Typer) -> None:
    app.command("checks")(checks)

