"""`billing-recon revenue`: RevenueReconciliation over a range of UTC days, its per-day table
(rich), its findings, `--json` and `--export FILE` (CSV of the findings). docs/revenue.md.

Exit codes as every command's (README "Exit codes"): 0 ok (also a dry-run that found drift),
1 the run failed, a fix failed or an apply left findings it cannot fix, 2 bad input (an unparseable day, an inverted range, a range
over 92 days, a day in the future), refused before anything is started."""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from temporalio.client import WorkflowFailureError

from common.types import Mode
from revenue.types import RevenueInput, RevenueProgress, RevenueResult
from revenue.workflow import RevenueReconciliation
from starter import queries
from starter.follow import Step, follow, live, report_failure, start
from starter.kit import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    build,
    choose_mode,
    console,
    database,
    day,
    err,
    fail,
    new_file,
    new_id,
    not_blank,
    run,
)


def revenue(
    since: date | None = typer.Option(None, "--since", parser=day, help="First UTC day, YYYY-MM-DD"),
    until: date | None = typer.Option(None, "--until", parser=day,
                                      help="Last UTC day, inclusive (default with --since omitted: the last 7 complete days)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compare and report only (default)"),
    apply: bool = typer.Option(False, "--apply", help="Resync the invoices found into the mirror (audited)"),
    as_json: bool = typer.Option(False, "--json", help="Print the result, days and findings as one JSON object"),
    export: Path | None = typer.Option(None, "--export", callback=new_file, help="Write the findings as CSV"),
    lookback_days: int | None = typer.Option(None, "--lookback-days", min=0, max=400,
                                             help="How far before --since invoices and payments are listed (default 90)"),
    actor: str = typer.Option("cli", help="Who runs it (audited)", callback=not_blank),
    reason: str | None = typer.Option(None, help="Recorded in every audit row", callback=not_blank),
    run_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)"),
) -> None:
    """Revenue per UTC day, the invoice mirror vs Stripe (paid invoices, invoice payments, refunds, balance)."""
    mode = choose_mode(dry_run=dry_run, apply=apply)
    fields: dict[str, Any] = {"since": since, "until": until, "mode": mode, "actor": actor, "reason": reason}
    if lookback_days is not None:
        fields["lookback_days"] = lookback_days
    request = build(RevenueInput, **fields)
    try:
        request.window(datetime.now(UTC).date())
    except ValueError as e:
        raise fail(f"invalid arguments: {e}", EXIT_BAD_INPUT) from e
    raise typer.Exit(run(_revenue(request, run_id or new_id("revenue", mode.value), as_json, export)))


async def _revenue(request: RevenueInput, workflow_id: str, as_json: bool, export: Path | None) -> int:
    handle = await start(RevenueReconciliation.run, request, workflow_id)
    try:
        with live("revenue", quiet=as_json) as show:
            result = await follow(handle, RevenueProgress, lambda p: show(_step(p)))
    except WorkflowFailureError as e:
        return report_failure(workflow_id, e, as_json=as_json)
    async with database() as conn:
        data = await queries.revenue_report(conn, result.run_id)
    if export:
        _export(data["findings"], export)
    if as_json:
        print(json.dumps({**result.model_dump(mode="json"), **data}, default=str))
    else:
        _print(result, data)
        if export:
            console.print(f"wrote {len(data['findings'])} findings to {export}")
    c = result.counts
    # An apply that leaves findings it cannot fix (paid twice, missing in Stripe) says so.
    return EXIT_FAILED if c.fix_failures or (request.mode == Mode.APPLY and c.unfixable) else EXIT_OK


def _step(p: RevenueProgress) -> Step:
    c = p.counts
    if p.day is None:
        return Step(f"listing {p.phase.value}: {p.pages_done} pages, {c.stripe_objects} objects")
    return Step(f"day {p.day}: {p.days_done}/{p.days_total} days, {c.invoices_compared} invoices, "
                f"{c.findings} findings, fixed {c.fixed}" + (" (paused)" if p.paused else ""),
                p.days_done, p.days_total)


def _print(r: RevenueResult, data: dict[str, Any]) -> None:
    t = Table(title=f"{r.run_id} ({r.mode}, {r.since} .. {r.until}): revenue per UTC day, minor units")
    for col in ("day", "cur", "mirror paid", "mirror refunded", "Stripe paid", "Stripe refunded", "payments",
                "out of band", "balance net", "drift", "findings"):
        t.add_column(col, justify="left" if col in ("day", "cur") else "right")
    for d in data["days"]:
        t.add_row(str(d["day"]), d["currency"], f"{d['local_paid']} ({d['local_count']})", str(d["local_refunded"]),
                  f"{d['stripe_paid']} ({d['stripe_count']})", str(d["stripe_refunded"]), str(d["payments_paid"]),
                  str(d["out_of_band"]), str(d["balance_net"]),
                  f"[red]{d['drift']}[/red]" if d["drift"] else "0", str(d["findings"]))
    console.print(t)
    if data["findings"]:
        f = Table(title="findings")
        for col in ("day", "invoice", "kind", "status", "customer", "detail"):
            f.add_column(col)
        for x in data["findings"]:
            f.add_row(str(x["day"]), x["stripe_invoice_id"], x["kind"], x["status"],
                      x["customer_id"] or x["stripe_customer_id"] or "-", x["detail"] or "")
        console.print(f)
    c = r.counts
    console.print(f"{c.days} days, {c.invoices_compared} invoices compared, {c.findings} findings, fixed {c.fixed}, "
                  f"refunds recorded {c.refunds_recorded}, unfixable {c.unfixable}, fix failures {c.fix_failures}")
    if r.paused:
        err.print("[yellow]auto-healing is paused: observe-only, nothing was written[/yellow]")


def _export(findings: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=queries.REVENUE_FINDING_COLUMNS)
        w.writeheader()
        w.writerows(findings)


def register(root: typer.Typer) -> None:
    root.command("revenue")(revenue)
