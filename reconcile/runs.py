"""Run bookkeeping: a run's row in `reconciliation_runs` (start, status, finish). Plain
functions over the pool; reconcile/activities.py exposes them as activities. The heartbeat
checkpoint and the audit writer are the shared kit's (`common.heartbeat`, `common.audit`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg
from temporalio.exceptions import ApplicationError

from autoheal import switch
from billing import correlation, metrics
from billing.periods import STRIPE_PAST_WINDOW, billing_period, current_period_window
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway
from common.types import RunStatus
from notify.outbox import never_failing
from reconcile import notices, periods_store
from reconcile.types import (
    AWAITING_APPROVAL,
    Counts,
    DiscrepancyStatus,
    FinishRunInput,
    FinishRunResult,
    MeterInfo,
    Permanent,
    Policy,
    RunContext,
    RunStatusUpdate,
    StartRunInput,
)

log = logging.getLogger(__name__)

MAX_WINDOW_DAYS = 400


def _fail(message: str, type_: str) -> ApplicationError:
    return ApplicationError(message, type=type_, non_retryable=True)


# Deterministic data errors: the same data raises them again on every retry (SQLSTATE class 22
# from Postgres: a numeric overflow, a bad cast; a NaN compared or a value too long to quantize
# in Python; a value a model refuses). They are isolated to the key or customer they come from
# and reported; where they cannot be, they fail non-retryably (`Permanent.INVALID_DATA`).
DATA_ERRORS = (asyncpg.DataError, ArithmeticError, ValueError)


def is_data_error(e: BaseException) -> bool:
    """`e` (or every exception of a TaskGroup's group) is a deterministic data error."""
    if isinstance(e, BaseExceptionGroup):
        return all(is_data_error(x) for x in e.exceptions)
    return isinstance(e, DATA_ERRORS)


# --------------------------------------------------------------------------- the run's row


async def start_run(pool: asyncpg.Pool, stripe: StripeGateway, settings: Settings,
                    inp: StartRunInput) -> RunContext:
    """Check the window, customers and meters (bad input fails permanently), resolve the
    policy, and record the run (a reused workflow id starts a fresh report)."""
    req = inp.request
    default_start, default_end = current_period_window(inp.today)
    if req.lookback_days and req.start_date is None:
        default_start = inp.today - timedelta(days=req.lookback_days - 1)
    start = req.start_date or default_start
    end = req.end_date or (inp.today if req.start_date is None else max(start, min(inp.today, billing_period(start)[1] - timedelta(days=1))))
    if end < start:
        raise _fail(f"invalid window: end {end} is before start {start}", Permanent.INVALID_WINDOW)
    if start > inp.today:
        raise _fail(f"invalid window: start {start} is in the future (today is {inp.today} UTC)", Permanent.INVALID_WINDOW)
    if (end - start).days + 1 > MAX_WINDOW_DAYS:
        raise _fail(f"invalid window: {start}..{end} spans more than {MAX_WINDOW_DAYS} days", Permanent.INVALID_WINDOW)
    end = min(end, inp.today)

    async with pool.acquire() as conn:
        if req.customers:
            known = {r["customer_id"] for r in await conn.fetch(
                "SELECT customer_id FROM billing.customers WHERE customer_id = ANY($1)", req.customers)}
            unknown = sorted(set(req.customers) - known)
            if unknown:
                raise _fail(f"unknown customer(s): {', '.join(unknown)}", Permanent.UNKNOWN_CUSTOMER)

    meters = await stripe.list_meters()
    by_name = {m.event_name: m for m in meters if m.status == "active"}
    missing = [m for m in req.meters if m not in by_name]
    if missing:
        raise _fail(f"no active Stripe meter for event name(s): {', '.join(missing)}", Permanent.UNKNOWN_METER)
    unsupported = [m for m in req.meters if by_name[m].formula != "sum"]
    if unsupported:
        # Asked for by name: bad input (exit 2), never retried.
        raise _fail(
            f"meter(s) {', '.join(unsupported)} do not aggregate with 'sum'; only sum meters "
            "can be reconciled with delta corrections", Permanent.UNSUPPORTED_METER)
    # The default scope (every meter) leaves non-sum meters out and says so: one count or last
    # meter in the account must not fail every run (the schedules' included).
    wanted = req.meters or sorted(n for n, m in by_name.items() if m.formula == "sum")
    skipped = {} if req.meters else {n: m.formula for n, m in by_name.items() if m.formula != "sum"}
    if req.start_date is None and not req.lookback_days:
        # The default window follows the subscriptions: from the earliest current period (or a
        # previous one still in its invoice grace), never past Stripe's 35-day window; the
        # calendar month too while some customer in scope has no metered subscription.
        async with pool.acquire() as conn:
            earliest, covered = await periods_store.earliest_period_start(
                conn, [by_name[m].id for m in wanted], sorted(set(req.customers)))
        if earliest is not None:
            start = max(earliest if covered else min(start, earliest), inp.today - STRIPE_PAST_WINDOW)

    s = settings
    policy = Policy(
        epsilon=req.epsilon if req.epsilon is not None else s.recon_epsilon,
        settle_seconds=req.settle_seconds if req.settle_seconds is not None else s.recon_settle_seconds,
        auto_approve_over_reporting=(
            req.auto_approve_over_reporting if req.auto_approve_over_reporting is not None
            else s.recon_auto_approve_over_reporting),
        page_size=req.page_size or s.recon_page_size,
        invoice_grace_seconds=s.recon_invoice_grace_seconds,
    )
    ctx = RunContext(
        run_id=inp.run_id, workflow_run_id=inp.workflow_run_id, mode=req.mode,
        window_start=start, window_end=end, customers=sorted(set(req.customers)),
        meters=[MeterInfo(event_name=m, stripe_meter_id=by_name[m].id) for m in wanted],
        meter_filter=sorted(set(req.meters)), unsupported_meters=skipped, policy=policy, actor=req.actor,
        globally_paused=await switch.paused(pool), customers_after=req.customers_after,
        customers_through=req.customers_through, budget_lane=req.budget_lane,
        verify_after_settle=req.verify_after_settle,
    )
    async with pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO billing.reconciliation_runs
                (run_id, workflow_run_id, mode, window_start, window_end, customers_filter,
                 meters_filter, correlation_id, customers_after, customers_through)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT (run_id) DO NOTHING
            """,
            ctx.run_id, ctx.workflow_run_id, ctx.mode.value, start, end,
            ctx.customers or None, req.meters or None, correlation.current(), req.customers_after,
            req.customers_through,
        )
        previous = await conn.fetchval(
            "SELECT workflow_run_id FROM billing.reconciliation_runs WHERE run_id = $1", ctx.run_id)
        if previous != ctx.workflow_run_id:
            # The workflow id was reused by a new execution: its report starts afresh (the
            # old execution's history stays in Temporal, its writes in audit_log).
            async with conn.transaction():
                await conn.execute("DELETE FROM billing.discrepancies WHERE run_id = $1", ctx.run_id)
                await conn.execute(
                    """
                    UPDATE billing.reconciliation_runs
                       SET workflow_run_id = $2, mode = $3, window_start = $4, window_end = $5,
                           customers_filter = $6, meters_filter = $7, status = $9,
                           counts = '{}', approved_by = NULL, rejected_by = NULL,
                           decision_reason = NULL, started_at = now(), finished_at = NULL, error = NULL,
                           correlation_id = $8, customers_after = $10, customers_through = $11
                     WHERE run_id = $1
                    """,
                    ctx.run_id, ctx.workflow_run_id, ctx.mode.value, start, end,
                    ctx.customers or None, req.meters or None, correlation.current(), RunStatus.RUNNING,
                    req.customers_after, req.customers_through)
    return ctx


async def set_run_status(pool: asyncpg.Pool, inp: RunStatusUpdate, settings: Settings) -> None:
    async with pool.acquire() as conn, conn.transaction():
        run = await conn.fetchrow(
            """
            UPDATE billing.reconciliation_runs
               SET status = $2,
                   approved_by = coalesce($3, approved_by),
                   rejected_by = coalesce($4, rejected_by),
                   decision_reason = coalesce($5, decision_reason)
             WHERE run_id = $1
            RETURNING run_id, workflow_run_id, kind, mode, error
            """,
            inp.run_id, inp.status.value, inp.approved_by, inp.rejected_by, inp.reason,
        )
        if run is not None:
            async with never_failing(conn, inp.run_id):
                await notices.on_status(conn, settings, run, inp.status)
        if inp.reject_held:
            await conn.execute(
                "UPDATE billing.discrepancies SET status = $2, updated_at = now() "
                "WHERE run_id = $1 AND status = ANY($3::text[])",
                inp.run_id, DiscrepancyStatus.REJECTED, list(AWAITING_APPROVAL))


# What a run wrote, from durable records: our outbox rows it planned and that reached Stripe
# (sent_at set: sent, confirmed, or marked lost/cancelled later), its audited cancels and counter
# sets, and its findings that went stale. Split between the scan (with the approved plan) and
# the verify pass at the verify pass's first recorded finding: phases run one after the other,
# and a pass records a key's finding before it corrects the key. Audit actions by both their
# names: the dotted vocabulary (common/audit.py, migration 0007) and the names before it.
RECORDED_COUNTS_SQL = """
WITH boundary AS (
    SELECT coalesce(min(created_at), 'infinity'::timestamptz) AS verify_from
      FROM billing.discrepancies WHERE run_id = $1 AND discrepancy_key LIKE 'verify|%'
)
SELECT 'corrections_pushed' AS figure, p.planned_at >= b.verify_from AS verify, count(*) AS n
  FROM billing.stripe_usage_pushes p, boundary b
 WHERE p.run_id = $1 AND p.workflow_run_id = $2 AND p.sent_at IS NOT NULL
 GROUP BY 1, 2
UNION ALL
SELECT CASE WHEN a.action IN ('cancel_meter_event', 'usage.cancel_meter_event')
            THEN 'corrections_cancelled' ELSE 'counter_repairs' END,
       a.at >= b.verify_from, count(*)
  FROM billing.audit_log a, boundary b
 WHERE a.workflow_id = $1 AND a.run_id = $2
   AND a.action IN ('cancel_meter_event', 'usage.cancel_meter_event', 'set_usage_counter', 'usage.set_counter')
 GROUP BY 1, 2
UNION ALL
SELECT 'stale_skipped', discrepancy_key LIKE 'verify|%', count(*)
  FROM billing.discrepancies WHERE run_id = $1 AND status = 'stale'
 GROUP BY 1, 2
"""
RECORDED = ("corrections_pushed", "corrections_cancelled", "counter_repairs", "stale_skipped")


async def recorded_counts(conn: asyncpg.Connection, inp: FinishRunInput) -> FinishRunResult:
    """The run's counts with its writes and stale findings taken from durable records (the
    pages' tally under-counts the work of an attempt killed mid-page: its heartbeat checkpoint
    predates it). stripe_writes is at least what was pushed and cancelled."""
    rows = await conn.fetch(RECORDED_COUNTS_SQL, inp.context.run_id, inp.context.workflow_run_id)
    found = {(r["figure"], r["verify"]): int(r["n"]) for r in rows}

    def merge(tally: Counts, verify: bool) -> Counts:
        rec = {f: found.get((f, verify), 0) for f in RECORDED}
        writes = rec["corrections_pushed"] + rec["corrections_cancelled"]
        return tally.model_copy(update={**rec, "stripe_writes": max(tally.stripe_writes, writes)})

    verify_counts = inp.verify_counts
    if verify_counts is None and any(v for (_, verify), v in found.items() if verify):
        verify_counts = Counts()
    return FinishRunResult(counts=merge(inp.counts, False),
                           verify_counts=None if verify_counts is None else merge(verify_counts, True))


async def finish_run(pool: asyncpg.Pool, inp: FinishRunInput, settings: Settings) -> FinishRunResult:
    async with pool.acquire() as conn, conn.transaction():
        final = await recorded_counts(conn, inp)
        row = await conn.fetchrow(
            """
            WITH prev AS (SELECT finished_at FROM billing.reconciliation_runs
                           WHERE run_id = $1 FOR UPDATE)
            UPDATE billing.reconciliation_runs r
               SET status = $2, counts = $3::jsonb, finished_at = now(), error = $4, observe_only = $5
              FROM prev
             WHERE r.run_id = $1
            RETURNING prev.finished_at IS NULL AS first_finish, r.kind, r.mode, r.run_id, r.workflow_run_id,
                      r.error, extract(epoch FROM r.finished_at - r.started_at)::float8 AS seconds
            """,
            inp.context.run_id, inp.status.value,
            {**final.counts.model_dump(),
             "verify": final.verify_counts.model_dump() if final.verify_counts else None,
             "warnings": inp.context.warnings()},
            inp.error, inp.observe_only,
        )
        if row is not None:
            async with never_failing(conn, inp.context.run_id):
                await notices.on_status(conn, settings, row, inp.status)
        findings = await conn.fetch(
            "SELECT kind, coalesce(action, 'none') AS action, count(*) AS n "
            "FROM billing.discrepancies WHERE run_id = $1 AND discrepancy_key NOT LIKE 'verify|%' "
            "GROUP BY 1, 2", inp.context.run_id)
    log.info("run %s finished: %s (%s)", inp.context.run_id, inp.status.value,
             ", ".join(f"{k}={v}" for k, v in final.counts.model_dump().items() if v) or "nothing found")
    # Counted once per run: a retried finish_run (its first answer lost) finds it finished.
    if row is not None and row["first_finish"]:
        metrics.record_run_finished(
            kind=row["kind"], mode=row["mode"], status=inp.status.value, seconds=row["seconds"],
            counts=final.counts.model_dump(),
            discrepancies=[(r["kind"], r["action"], r["n"]) for r in findings])
    return final
