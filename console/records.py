"""Read-only records: the audit log (filters by customer, actor, action and time; Temporal UI
links), revenue runs (days and findings, CSV downloads) and the incident report (rendered by
`incidents/`, downloadable as md, csv or json).

The audit filters arrive by POST: a customer id or an actor's name is personal data and must not
sit in a URL. Revenue and incident pages take only run ids and times in their URLs."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from starlette.responses import Response

from billing.schedules import ScheduleConfigError, parse_duration
from console import queries
from console.settings import Role
from console.web import Ctx, guard, refuse
from incidents.queries import read_incident
from incidents.render import ReportFormat, render
from incidents.report import build_report
from starter.kit import parse_time
from starter.queries import REVENUE_DAY_COLUMNS, REVENUE_FINDING_COLUMNS, revenue_report

AUDIT_FILTERS = ("customer", "actor", "action", "since", "until")
DEFAULT_MAX_GAP = "1h"
MAX_INCIDENT_DAYS = 92  # a report over more than a quarter is a batch job, not a page


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return parse_time(value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


async def _audit(ctx: Ctx, filters: dict[str, str]) -> Response:
    try:
        since = _time(filters.get("since"), "since")
        until = _time(filters.get("until"), "until")
        before = None
        if filters.get("before_at") and filters.get("before_id"):
            before = (datetime.fromisoformat(filters["before_at"]), int(filters["before_id"]))
    except ValueError as e:
        return refuse(400, str(e))
    async with ctx.app.pool.acquire() as conn:
        rows = await queries.audit(conn, customer=filters.get("customer") or None, actor=filters.get("actor") or None,
                                   action=filters.get("action") or None, since=since, until=until, before=before,
                                   limit=queries.AUDIT_ROWS + 1)
    more = len(rows) > queries.AUDIT_ROWS
    return ctx.render("audit.html", rows=rows[:queries.AUDIT_ROWS], more=more,
                      filters={k: filters.get(k, "") for k in AUDIT_FILTERS})


@guard(Role.VIEWER)
async def audit_page(ctx: Ctx) -> Response:
    return await _audit(ctx, {})


@guard(Role.VIEWER, post=True)
async def audit_search(ctx: Ctx) -> Response:
    return await _audit(ctx, {k: ctx.field(k) or "" for k in (*AUDIT_FILTERS, "before_at", "before_id")})


@guard(Role.VIEWER)
async def revenue_list(ctx: Ctx) -> Response:
    async with ctx.app.pool.acquire() as conn:
        rows = await queries.revenue_runs(conn)
    return ctx.render("revenue_list.html", rows=rows)


@guard(Role.VIEWER)
async def revenue_run(ctx: Ctx) -> Response:
    async with ctx.app.pool.acquire() as conn:
        run = await queries.run_row(conn, ctx.request.path_params["ref"])
        if run is None or run["kind"] != "revenue":
            return refuse(404, "no such revenue run")
        data = await revenue_report(conn, run["run_id"])
    return ctx.render("revenue.html", run=run, ref=queries.run_ref(run), days=data["days"], findings=data["findings"],
                      day_columns=REVENUE_DAY_COLUMNS, finding_columns=REVENUE_FINDING_COLUMNS)


@guard(Role.VIEWER)
async def revenue_csv(ctx: Ctx) -> Response:
    part = ctx.request.path_params["part"]
    if part not in ("days", "findings"):
        return refuse(404, "days.csv or findings.csv")
    async with ctx.app.pool.acquire() as conn:
        run = await queries.run_row(conn, ctx.request.path_params["ref"])
        if run is None or run["kind"] != "revenue":
            return refuse(404, "no such revenue run")
        data = await revenue_report(conn, run["run_id"])
    columns = REVENUE_DAY_COLUMNS if part == "days" else REVENUE_FINDING_COLUMNS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(data[part])
    return _download(buf.getvalue(), f"revenue-{queries.run_ref(run)}-{part}.csv", "text/csv")


def _incident_window(ctx: Ctx) -> tuple[datetime, datetime, timedelta]:
    q = ctx.request.query_params
    until = _time(q.get("until"), "until") or datetime.now(UTC)
    since = _time(q.get("since"), "since") or until - timedelta(days=7)
    try:
        gap = parse_duration(q.get("max_gap") or DEFAULT_MAX_GAP)
    except ScheduleConfigError as e:
        raise ValueError(f"max_gap: {e}") from None
    if until <= since:
        raise ValueError("until is not after since")
    if until - since > timedelta(days=MAX_INCIDENT_DAYS):
        raise ValueError(f"a window of at most {MAX_INCIDENT_DAYS} days")
    return since, until, gap


async def _incident_text(ctx: Ctx, fmt: ReportFormat) -> tuple[str, datetime, datetime, timedelta]:
    since, until, gap = _incident_window(ctx)
    async with ctx.app.pool.acquire() as conn:
        data = await read_incident(conn, since, until)
    return render(build_report(data, max_gap=gap), fmt), since, until, gap


@guard(Role.VIEWER)
async def incident_page(ctx: Ctx) -> Response:
    try:
        text, since, until, _ = await _incident_text(ctx, ReportFormat.MD)
    except ValueError as e:
        return refuse(400, str(e))
    q = ctx.request.query_params
    return ctx.render("incidents.html", report=text, since=since, until=until,
                      max_gap=q.get("max_gap") or DEFAULT_MAX_GAP)


@guard(Role.VIEWER)
async def incident_download(ctx: Ctx) -> Response:
    try:
        fmt = ReportFormat(ctx.request.path_params["fmt"])
        text, since, until, _ = await _incident_text(ctx, fmt)
    except ValueError as e:
        return refuse(400, str(e))
    media = {ReportFormat.MD: "text/markdown", ReportFormat.CSV: "text/csv", ReportFormat.JSON: "application/json"}
    return _download(text, f"incident-{since:%Y%m%dT%H%M}-{until:%Y%m%dT%H%M}.{fmt.value}", media[fmt])


def _download(text: str, filename: str, media_type: str) -> Response:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    return Response(text, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{safe}"'})
