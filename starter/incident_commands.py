"""`incident-report --since T --until T [--format md|csv|json] [--output FILE]`: what happened to
billing over a window, from the durable records alone (incidents/, docs/incident-report.md).
Read-only. Exit codes: 0 the report was written; 1 Postgres did not answer; 2 bad arguments."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from billing.schedules import parse_duration
from incidents.queries import read_incident
from incidents.render import ReportFormat, render
from incidents.report import build_report
from starter.kit import EXIT_BAD_INPUT, err, fail, moment, new_file, read

MAX_GAP_HELP = "A window longer than this without a successful reconciliation is reported: 30m, 1h, 1d"


def incident_report(
    since: datetime = typer.Option(..., parser=moment, help="Start: 2026-11-01, 2026-11-01T12:00:00Z or 3d/12h"),
    until: datetime | None = typer.Option(None, parser=moment, help="End (exclusive; default now)"),
    fmt: ReportFormat = typer.Option(ReportFormat.MD, "--format", help="md, csv (the discrepancies) or json"),
    max_gap: str = typer.Option("1h", help=MAX_GAP_HELP),
    output: Path | None = typer.Option(None, "--output", "-o", callback=new_file, help="Write to FILE (default stdout)"),
) -> None:
    """Windows without a successful reconciliation, every discrepancy and how it ended (with
    quantities and amounts), corrections applied and open, manual adjustments, webhook events
    missed and replayed. Read-only."""
    end = until or datetime.now(UTC)
    try:
        gap = parse_duration(max_gap)
    except ValueError as e:
        raise fail(f"invalid --max-gap: {e}", EXIT_BAD_INPUT) from None
    if end <= since:
        raise fail(f"--until {end.isoformat()} is not after --since {since.isoformat()}", EXIT_BAD_INPUT)
    data = read(read_incident, since, end)
    text = render(build_report(data, max_gap=gap), fmt)
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
        err.print(f"wrote {output} ({fmt.value})")


def register(app: typer.Typer) -> None:
    app.command("incident-report")(incident_report)
