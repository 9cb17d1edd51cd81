"""Runs: a filtered, keyset-paged list; a run page with counts, discrepancies (filters, CSV
export) and, for a plan waiting for approval, Approve/Reject with a reason through
ReconcileUsage's `approve`/`reject` updates (`starter.reconcile_commands.decide`, as
`billing-recon approve/reject`), recorded with the signed-in actor."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import typer
from starlette.responses import RedirectResponse, Response, StreamingResponse
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from common import ui
from common.types import ApprovalDecision, Mode, RunStatus
from console import queries
from console.settings import Role
from console.web import Ctx, guard, refuse
from starter import visibility
from starter.queries import DISCREPANCY_COLUMNS, run_decision
from starter.reconcile_commands import decide

CSV_BATCH = 2000


def _choice(ctx: Ctx, name: str, allowed: list[str]) -> str | None:
    value = ctx.request.query_params.get(name) or None
    return value if value in allowed else None


@guard(Role.VIEWER)
async def runs_list(ctx: Ctx) -> Response:
    q = ctx.request.query_params
    kind = _choice(ctx, "kind", queries.RUN_KINDS)
    mode = _choice(ctx, "mode", queries.RUN_MODES)
    status = _choice(ctx, "status", queries.RUN_STATUSES)
    open_only = q.get("open") == "1"
    try:
        page = max(0, int(q.get("page") or 0))
    except ValueError:
        return refuse(400, "page is not a number")
    async with ctx.app.pool.acquire() as conn:
        rows = await queries.runs(conn, kind=kind, mode=mode, status=status, open_only=open_only,
                                  offset=page * queries.PAGE_ROWS, limit=queries.PAGE_ROWS + 1)
    more = len(rows) > queries.PAGE_ROWS
    rows = rows[:queries.PAGE_ROWS]
    filters = {"kind": kind or "", "mode": mode or "", "status": status or "", "open": "1" if open_only else ""}
    return ctx.render("runs.html", rows=rows, more=more, filters=filters, page=page, kinds=queries.RUN_KINDS,
                      modes=queries.RUN_MODES, statuses=queries.RUN_STATUSES)


def _discrepancy_filters(ctx: Ctx) -> tuple[str | None, str | None]:
    q = ctx.request.query_params
    return (q.get("kind") or None), (q.get("status") or None)


@guard(Role.VIEWER)
async def run_page(ctx: Ctx) -> Response:
    kind, status = _discrepancy_filters(ctx)
    try:
        page = max(0, int(ctx.request.query_params.get("page") or 0))
    except ValueError:
        return refuse(400, "page is not a number")
    async with ctx.app.pool.acquire() as conn:
        run = await queries.run_row(conn, ctx.request.path_params["ref"])
        if run is None:
            return refuse(404, "no such reconciliation run")
        run_id = run["run_id"]
        breakdown = await queries.discrepancy_breakdown(conn, run_id)
        rows = await queries.discrepancies(conn, run_id, kind=kind, status=status, after=None,
                                           limit=queries.PAGE_ROWS + 1, offset=page * queries.PAGE_ROWS)
    more = len(rows) > queries.PAGE_ROWS
    counts = {k: v for k, v in (run["counts"] or {}).items() if k not in ("verify", "warnings") and v}
    return ctx.render("run.html", run=run, counts=counts, warnings=(run["counts"] or {}).get("warnings") or [],
                      breakdown=breakdown, rows=rows[:queries.PAGE_ROWS], more=more,
                      filters={"kind": kind or "", "status": status or ""},
                      kinds=sorted({b["kind"] for b in breakdown}), statuses=sorted({b["status"] for b in breakdown}),
                      awaiting=run["status"] == RunStatus.AWAITING_APPROVAL.value, ref=queries.run_ref(run),
                      page=page)


@guard(Role.VIEWER)
async def run_csv(ctx: Ctx) -> Response:
    """Every discrepancy matching the filters, the columns of `billing-recon report --export-discrepancies`,
    streamed in key order (a run with 100k keys is never held in memory)."""
    kind, status = _discrepancy_filters(ctx)
    async with ctx.app.pool.acquire() as conn:
        run = await queries.run_row(conn, ctx.request.path_params["ref"])
    if run is None:
        return refuse(404, "no such reconciliation run")
    run_id = run["run_id"]

    async def body() -> AsyncIterator[str]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=DISCREPANCY_COLUMNS)
        writer.writeheader()
        after = None
        while True:
            async with ctx.app.pool.acquire() as conn:
                batch = await queries.discrepancies(conn, run_id, kind=kind, status=status, after=after,
                                                    limit=CSV_BATCH)
            writer.writerows(batch)
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            if len(batch) < CSV_BATCH:
                return
            after = batch[-1]["discrepancy_key"]

    return StreamingResponse(body(), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{_safe(queries.run_ref(run))}-discrepancies.csv"'})


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


async def _decide(ctx: Ctx, approved: bool) -> Response:
    async with ctx.app.pool.acquire() as conn:
        run = await queries.run_row(conn, ctx.request.path_params["ref"])
    if run is None:
        return refuse(404, "no such reconciliation run")
    handle = (await ctx.app.temporal()).get_workflow_handle(run["run_id"])
    decision = ApprovalDecision(actor=ctx.who.actor, reason=ctx.field("reason"))
    verb = "approve" if approved else "reject"
    try:
        await decide(handle, decision, approved=approved)
    except (WorkflowUpdateFailedError, RPCError) as e:
        message = getattr(e.cause, "message", e.cause) if isinstance(e, WorkflowUpdateFailedError) else e.message
        # The same decision made already is a no-op, as `billing-recon approve` says it.
        async with ctx.app.pool.acquire() as conn:
            earlier = await run_decision(conn, run["run_id"])
        by = earlier and (earlier["approved_by"] if approved else earlier["rejected_by"])
        if by:
            # (who decided is on the page, never in the URL)
            return RedirectResponse(f"/runs/{queries.run_ref(run)}?done=already+{verb}d", status_code=303)
        return refuse(409, f"{verb} refused: {message}")
    return RedirectResponse(f"/runs/{queries.run_ref(run)}?done={verb}d", status_code=303)


@guard(Role.APPROVER, post=True)
async def approve(ctx: Ctx) -> Response:
    return await _decide(ctx, True)


@guard(Role.APPROVER, post=True)
async def reject(ctx: Ctx) -> Response:
    return await _decide(ctx, False)


SEARCH_LIMIT = 100


@guard(Role.VIEWER)
async def runs_search(ctx: Ctx) -> Response:
    """Every job's runs (not only reconciliations) found in Temporal by our search attributes,
    as `billing-recon runs --kind/--mode/--outcome/--schedule/--correlation-id` finds them."""
    q = ctx.request.query_params
    return await _search(ctx, {k: q.get(k) or "" for k in SEARCH_FILTERS}, q.get("open") == "1", customer=None)


@guard(Role.VIEWER, post=True)
async def runs_of_customer(ctx: Ctx) -> Response:
    """`runs --customer C` (BillingCustomerIds): by POST, since a customer id must not sit in a URL."""
    customer = ctx.field("customer")
    if customer is None:
        return refuse(400, "name a customer")
    return await _search(ctx, dict.fromkeys(SEARCH_FILTERS, ""), False, customer=customer)


SEARCH_FILTERS = ("kind", "mode", "outcome", "schedule", "correlation_id")


async def _search(ctx: Ctx, filters: dict[str, str], open_only: bool, *, customer: str | None) -> Response:
    rows: list[dict] = []
    error = None
    try:
        mode = Mode(filters["mode"]) if filters["mode"] else None
        outcome = ui.Outcome(filters["outcome"]) if filters["outcome"] else None
        query = visibility.visibility_query(
            kind=filters["kind"] or None, mode=mode, outcome=outcome, customer=customer,
            correlation_id=filters["correlation_id"] or None, schedule=filters["schedule"] or None,
            open_only=open_only)
        if query is not None:
            rows = await visibility.find_runs(query, SEARCH_LIMIT, await ctx.app.temporal())
    except ValueError:
        error = "unknown mode or outcome"
    except typer.Exit:
        error = "Temporal refused the filter: a value may hold letters, digits and _.:@/+- only, and the search " \
                "attributes must be registered (billing-recon temporal setup)"
    return ctx.render("runs_search.html", rows=rows, filters=filters, open_only=open_only, error=error,
                      customer=customer or "", modes=queries.RUN_MODES, outcomes=[o.value for o in ui.Outcome],
                      limit=SEARCH_LIMIT)
