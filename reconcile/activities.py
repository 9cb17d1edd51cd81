"""Usage reconciliation activities: pages of customers, compared across ledger, counters, our
outbox and Stripe's summaries, corrected idempotently.

Exactly-once: every Stripe write is first recorded in `billing.stripe_usage_pushes` under a
deterministic identifier (status `planned`), then sent, then marked `sent`. A crash anywhere
leaves either a `planned` row (sent again under the same identifier before anything else is
decided; Stripe refuses a second copy within 24 h, which we read as "already sent") or a `sent`
row (counted in P, so the key is `pending`, never pushed again).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from autoheal import switch
from billing import correlation, metrics
from billing.periods import (
    billing_period,
    current_period_window,
    days_in,
    periods_overlapping,
    push_timestamp,
)
from billing.policy import (
    CounterFinding,
    FindingKind,
    Push,
    StripeFinding,
    classify_counter,
    classify_stripe_key,
    diff_pct,
    fallback_compensation_identifier,
    to_stripe_value,
)
from billing.settings import Settings
from billing.stripe_gateway import CancelOutcome, PushOutcome, StripeGateway
from common.types import AuditInput, Mode
from reconcile import store
from reconcile.types import (
    ApplyPlanInput,
    Counts,
    FinishRunInput,
    MeterInfo,
    PageCheckpoint,
    PageInput,
    PageResult,
    Policy,
    RunContext,
    RunStatusUpdate,
    StartRunInput,
)

log = logging.getLogger(__name__)

# Customers handled between two checkpoints (and so redone at most after a crash). Each batch
# ends with a phase where Stripe is idle (its corrections, then the next batch's SQL reads), so
# small batches cost wall time: at 1M events / 10k customers, 50 -> 250 took the apply run from
# 60 s to 48 s (bench/reconcile, docs/PERFORMANCE.md). A crash redoes at most 250 customers'
# reads: 20 s at Stripe's test-mode 25 ops/s.
SUB_BATCH = 250
# The last checkpoint is re-sent this often while a batch works (heartbeat timeout is 30 s);
# the heartbeat is also how a cancellation (a `pause`) reaches the activity.
HEARTBEAT_EVERY_SECONDS = 1.0
# Stripe dedupes identifiers for at least 24 h: a `planned` row younger than this is re-sent.
RESEND_WINDOW = timedelta(hours=23)
MAX_WINDOW_DAYS = 400


class Permanent:
    """ApplicationError types that retrying cannot fix."""

    INVALID_WINDOW = "InvalidWindow"
    UNKNOWN_CUSTOMER = "UnknownCustomer"
    UNKNOWN_METER = "UnknownMeter"
    UNSUPPORTED_METER = "UnsupportedMeter"


def _fail(message: str, type_: str) -> ApplicationError:
    return ApplicationError(message, type=type_, non_retryable=True)


@asynccontextmanager
async def _heartbeating(first: PageCheckpoint) -> AsyncIterator[Callable[[PageCheckpoint], None]]:
    """Heartbeat the latest checkpoint now and every few seconds until the block ends, so a
    long batch (many Stripe calls under the rate limiter) never looks like a dead worker.
    Yields a function that records a newer checkpoint."""
    latest = {"details": first.model_dump(mode="json")}

    def record(cp: PageCheckpoint) -> None:
        latest["details"] = cp.model_dump(mode="json")
        activity.heartbeat(latest["details"])

    async def beat() -> None:
        while True:
            activity.heartbeat(latest["details"])
            await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield record
    finally:
        task.cancel()


def _now() -> datetime:
    return datetime.now(UTC)


def _dec(v: Any) -> Decimal:
    return Decimal(v) if v is not None else Decimal(0)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@dataclass
class _Customer:
    customer_id: str
    stripe_customer_id: str | None


@dataclass
class _Finding:
    """One discrepancy row to record, with the action that fixes it (if any)."""

    key: str
    kind: str
    customer_id: str
    stripe_customer_id: str | None
    meter: str
    usage_day: date | None = None
    period_start: date | None = None
    ledger: Decimal | None = None
    counter: Decimal | None = None
    pushed: Decimal | None = None
    stripe: Decimal | None = None
    beyond_epsilon: bool = False
    action: str | None = None
    params: dict[str, Any] | None = None
    status: str = "observed"
    detail: str = ""
    over_quota_transition: bool = False
    extra_counts: Counts = field(default_factory=Counts)


class UsageActivities:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway, settings: Settings) -> None:
        self.pool = pool
        self.stripe = stripe
        self.settings = settings

    # ------------------------------------------------------------------ run bookkeeping

    @activity.defn(name="usage.start_run")
    async def start_run(self, inp: StartRunInput) -> RunContext:
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

        async with self.pool.acquire() as conn:
            if req.customers:
                known = {r["customer_id"] for r in await conn.fetch(
                    "SELECT customer_id FROM billing.customers WHERE customer_id = ANY($1)", req.customers)}
                unknown = sorted(set(req.customers) - known)
                if unknown:
                    raise _fail(f"unknown customer(s): {', '.join(unknown)}", Permanent.UNKNOWN_CUSTOMER)

        meters = await self.stripe.list_meters()
        by_name = {m.event_name: m for m in meters if m.status == "active"}
        wanted = req.meters or sorted(by_name)
        missing = [m for m in wanted if m not in by_name]
        if missing:
            raise _fail(f"no active Stripe meter for event name(s): {', '.join(missing)}", Permanent.UNKNOWN_METER)
        unsupported = [m for m in wanted if by_name[m].formula != "sum"]
        if unsupported:
            raise _fail(
                f"meter(s) {', '.join(unsupported)} do not aggregate with 'sum'; only sum meters "
                "can be reconciled with delta corrections", Permanent.UNSUPPORTED_METER)

        s = self.settings
        policy = Policy(
            epsilon=req.epsilon if req.epsilon is not None else s.recon_epsilon,
            settle_seconds=req.settle_seconds if req.settle_seconds is not None else s.recon_settle_seconds,
            auto_approve_over_reporting=(
                req.auto_approve_over_reporting if req.auto_approve_over_reporting is not None
                else s.recon_auto_approve_over_reporting),
            page_size=req.page_size or s.recon_page_size,
        )
        ctx = RunContext(
            run_id=inp.run_id, workflow_run_id=inp.workflow_run_id, mode=req.mode,
            window_start=start, window_end=end, customers=sorted(set(req.customers)),
            meters=[MeterInfo(event_name=m, stripe_meter_id=by_name[m].id) for m in wanted],
            meter_filter=sorted(set(req.meters)), policy=policy, actor=req.actor,
            globally_paused=await switch.paused(self.pool),
        )
        async with self.pool.acquire() as conn:
            await conn.execute(
                """
                INSERT INTO billing.reconciliation_runs
                    (run_id, workflow_run_id, mode, window_start, window_end, customers_filter,
                     meters_filter, correlation_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (run_id) DO NOTHING
                """,
                ctx.run_id, ctx.workflow_run_id, ctx.mode.value, start, end,
                ctx.customers or None, req.meters or None, correlation.current(),
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
                               customers_filter = $6, meters_filter = $7, status = 'running',
                               counts = '{}', approved_by = NULL, rejected_by = NULL,
                               decision_reason = NULL, started_at = now(), finished_at = NULL, error = NULL,
                               correlation_id = $8
                         WHERE run_id = $1
                        """,
                        ctx.run_id, ctx.workflow_run_id, ctx.mode.value, start, end,
                        ctx.customers or None, req.meters or None, correlation.current())
        return ctx

    @activity.defn(name="usage.set_run_status")
    async def set_run_status(self, inp: RunStatusUpdate) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                """
                UPDATE billing.reconciliation_runs
                   SET status = $2,
                       approved_by = coalesce($3, approved_by),
                       rejected_by = coalesce($4, rejected_by),
                       decision_reason = coalesce($5, decision_reason)
                 WHERE run_id = $1
                """,
                inp.run_id, inp.status.value, inp.approved_by, inp.rejected_by, inp.reason,
            )
            if inp.reject_held:
                await conn.execute(
                    "UPDATE billing.discrepancies SET status = 'rejected', updated_at = now() "
                    "WHERE run_id = $1 AND status IN ('proposed', 'held')", inp.run_id)

    @activity.defn(name="usage.finish_run")
    async def finish_run(self, inp: FinishRunInput) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                WITH prev AS (SELECT finished_at FROM billing.reconciliation_runs
                               WHERE run_id = $1 FOR UPDATE)
                UPDATE billing.reconciliation_runs r
                   SET status = $2, counts = $3::jsonb, finished_at = now(), error = $4, observe_only = $5
                  FROM prev
                 WHERE r.run_id = $1
                RETURNING prev.finished_at IS NULL AS first_finish, r.kind, r.mode,
                          extract(epoch FROM r.finished_at - r.started_at)::float8 AS seconds
                """,
                inp.context.run_id, inp.status.value,
                {**inp.counts.model_dump(),
                 "verify": inp.verify_counts.model_dump() if inp.verify_counts else None},
                inp.error, inp.observe_only,
            )
            findings = await conn.fetch(
                "SELECT kind, coalesce(action, 'none') AS action, count(*) AS n "
                "FROM billing.discrepancies WHERE run_id = $1 AND discrepancy_key NOT LIKE 'verify|%' "
                "GROUP BY 1, 2", inp.context.run_id)
        log.info("run %s finished: %s (%s)", inp.context.run_id, inp.status.value,
                 ", ".join(f"{k}={v}" for k, v in inp.counts.model_dump().items() if v) or "nothing found")
        # Counted once per run: a retried finish_run (its first answer lost) finds it finished.
        if row is not None and row["first_finish"]:
            metrics.record_run_finished(
                kind=row["kind"], mode=row["mode"], status=inp.status.value, seconds=row["seconds"],
                counts=inp.counts.model_dump(),
                discrepancies=[(r["kind"], r["action"], r["n"]) for r in findings])

    @activity.defn(name="usage.audit")
    async def audit(self, inp: AuditInput) -> None:
        async with self.pool.acquire() as conn:
            await _audit(conn, inp)

    # ------------------------------------------------------------------ the page scan

    @activity.defn(name="usage.reconcile_page")
    async def reconcile_page(self, inp: PageInput) -> PageResult:
        ctx = inp.context
        checkpoint = PageCheckpoint()
        details = activity.info().heartbeat_details
        if details:
            # Comes back as a plain dict after a retry: resume after the last finished batch.
            checkpoint = PageCheckpoint.model_validate(details[0])
        start_cursor = checkpoint.done_through or inp.cursor
        already = checkpoint.counts.customers_scanned  # finished by an earlier attempt

        async with self.pool.acquire() as conn:
            rows = await store.customers_page(
                conn, after=start_cursor, limit=ctx.policy.page_size - already,
                only=ctx.customers, verify_run=ctx.run_id if inp.verify else None)
        customers = [_Customer(r["customer_id"], r["stripe_customer_id"]) for r in rows]
        counts = checkpoint.counts
        async with _heartbeating(checkpoint) as beat:
            for i in range(0, len(customers), SUB_BATCH):
                batch = customers[i : i + SUB_BATCH]
                counts = counts.add(await self._reconcile_batch(ctx, batch, inp))
                beat(PageCheckpoint(done_through=batch[-1].customer_id, counts=counts))
        done = already + len(customers)
        last = customers[-1].customer_id if customers else start_cursor
        # A full page means there may be more, even when an earlier attempt had already done
        # this page's last batch (then nothing was left to read here).
        next_cursor = last if done >= ctx.policy.page_size else None
        return PageResult(next_cursor=next_cursor, counts=counts)

    async def _reconcile_batch(self, ctx: RunContext, batch: list[_Customer], inp: PageInput) -> Counts:
        counts = Counts(customers_scanned=len(batch))
        ids = [c.customer_id for c in batch]
        meter_names = [m.event_name for m in ctx.meters]
        corrective = not inp.observe_only and ctx.mode == Mode.APPLY
        now = _now()

        if corrective:
            await self._hold_if_paused()
            await self._flush_planned(ctx, ids, now, counts)

        periods = periods_overlapping(ctx.window_start, ctx.window_end)
        # One snapshot for all reads: an app committing an event and its counter increment
        # between two reads must not look like drift.
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # Counters are checked against the ledger for every meter, Stripe-metered or not.
            day_rows = await store.ledger_days(conn, ids, periods, ctx.meter_filter)
            counter_rows = await store.counters(conn, ids, [p[0] for p in periods], ctx.meter_filter)
            push_rows = await store.pushes(conn, ids, ctx.window_start, ctx.window_end)

        metered = set(meter_names)
        ledger: dict[tuple[str, str, date], Decimal] = {}
        period_totals: dict[tuple[str, str, date], Decimal] = defaultdict(Decimal)
        unmetered: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for r in day_rows:
            cust, meter, day, total = r["customer_id"], r["meter"], r["day"], _dec(r["total"])
            period_totals[(cust, meter, day.replace(day=1))] += total  # periods are calendar months
            if not ctx.window_start <= day <= ctx.window_end:
                continue
            if meter in metered:
                ledger[(cust, meter, day)] = total
                counts.dedupe_count += int(r["dupes"] or 0)
            elif not ctx.meter_filter:
                unmetered[(cust, meter)] += total
        period_rows = [{"customer_id": c, "meter": m, "period_start": p, "total": t}
                       for (c, m, p), t in period_totals.items()]
        pushes: dict[tuple[str, str, date], list[Push]] = defaultdict(list)
        for r in push_rows:
            pushes[(r["customer_id"], r["meter"], r["usage_day"])].append(Push(
                r["identifier"], _dec(r["value"]), r["status"], r["kind"], r["planned_at"],
                r["sent_at"], r["cancelled_at"]))

        findings: list[_Finding] = []
        by_stripe_id = {c.customer_id: c.stripe_customer_id for c in batch}
        for (cust, meter), total in sorted(unmetered.items()):
            counts.unmetered_usage += 1
            findings.append(_Finding(
                key=f"stripe|{cust}|{meter}|unmetered", kind=FindingKind.UNMETERED_USAGE,
                customer_id=cust, stripe_customer_id=by_stripe_id.get(cust),
                meter=meter, ledger=total, status="observed",
                detail="no active Stripe meter has this event name: this usage is never billed"))
        findings += self._counter_findings(ctx, batch, period_rows, counter_rows)
        stripe_values, unreadable = await self._fetch_summaries(ctx, batch)
        for (cust, meter), message in sorted(unreadable.items()):
            counts.reconcile_failures += 1
            findings.append(_Finding(
                key=f"stripe|{cust}|{meter}|read", kind=FindingKind.STRIPE_READ_FAILED,
                customer_id=cust, stripe_customer_id=by_stripe_id.get(cust), meter=meter,
                status="failed", detail=message[:500]))
        by_id = {c.customer_id: c for c in batch}
        days = days_in(ctx.window_start, ctx.window_end)
        settle = timedelta(seconds=ctx.policy.settle_seconds)
        confirmed: list[str] = []  # our sent pushes that Stripe now reflects
        for c in batch:
            for m in ctx.meters:
                for day in days:
                    k = (c.customer_id, m.event_name, day)
                    L = ledger.get(k, Decimal(0))
                    if c.stripe_customer_id is None:
                        if L != 0:
                            findings.append(_Finding(
                                key=f"stripe|{c.customer_id}|{m.event_name}|{day}",
                                kind=FindingKind.UNMAPPED_CUSTOMER, customer_id=c.customer_id,
                                stripe_customer_id=None, meter=m.event_name, usage_day=day, ledger=L,
                                status="failed", detail="customer has usage but no stripe_customer_id"))
                            counts.reconcile_failures += 1
                        continue
                    if (c.customer_id, m.event_name) in unreadable:
                        continue
                    S = stripe_values.get((c.customer_id, m.event_name), {}).get(day, Decimal(0))
                    key_pushes = pushes.get(k, [])
                    if L == 0 and S == 0 and not key_pushes:
                        continue
                    counts.keys_checked += 1
                    f = classify_stripe_key(
                        customer_id=c.customer_id, meter=m.event_name, day=day, ledger=L, stripe=S,
                        pushes=key_pushes, now=now, settle=settle, epsilon=ctx.policy.epsilon,
                        auto_approve_over_reporting=ctx.policy.auto_approve_over_reporting)
                    if f.kind == FindingKind.OK:
                        confirmed += f.confirm
                        continue
                    findings.append(_stripe_finding(by_id[c.customer_id], m, day, f))

        if confirmed and corrective:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE billing.stripe_usage_pushes SET status = 'confirmed', settled_at = now() "
                    "WHERE identifier = ANY($1) AND status = 'sent'", confirmed)

        prefix = "verify|" if inp.verify else ""
        for finding in findings:
            finding.key = prefix + finding.key
            self._decide_status(ctx, finding, inp, counts)
        await self._record(ctx, findings)
        if corrective:
            counts = counts.add(await self._execute_all(ctx, [f for f in findings if f.status == "approved"]))
        return counts

    def _counter_findings(self, ctx, batch, period_rows, counter_rows) -> list[_Finding]:
        ledger = {(r["customer_id"], r["meter"], r["period_start"]): _dec(r["total"]) for r in period_rows}
        ctr = {(r["customer_id"], r["meter"], r["period_start"]): r for r in counter_rows}
        sids = {c.customer_id: c.stripe_customer_id for c in batch}
        out: list[_Finding] = []
        for key in sorted(set(ledger) | set(ctr)):
            cust, meter, pstart = key
            row = ctr.get(key)
            L = ledger.get(key, Decimal(0))
            cf: CounterFinding = classify_counter(
                L, _dec(row["value"]) if row else None, row["quota"] if row else None, key in ledger)
            if not cf.needs_repair:
                continue
            pend = row["period_end"] if row else billing_period(pstart)[1]
            out.append(_Finding(
                key=f"counter|{cust}|{meter}|{pstart}", kind=cf.kind, customer_id=cust,
                stripe_customer_id=sids.get(cust), meter=meter, period_start=pstart, ledger=L,
                counter=cf.counter, action="set_counter",
                params={"counter": {"period_start": pstart, "period_end": pend,
                                    "expected_before": cf.counter, "value": L, "quota": cf.quota}},
                over_quota_transition=cf.over_quota_transition,
                detail="counter has no usage behind it" if cf.kind == FindingKind.ORPHAN_COUNTER else ""))
        return out

    async def _fetch_summaries(
        self, ctx: RunContext, batch: list[_Customer]
    ) -> tuple[dict[tuple[str, str], dict[date, Decimal]], dict[tuple[str, str], str]]:
        """Stripe's daily values per (customer, meter), and the pairs Stripe refused to read
        (e.g. a deleted or mis-mapped customer): those are reported, never retried forever."""
        sem = asyncio.Semaphore(self.settings.recon_stripe_concurrency)
        out: dict[tuple[str, str], dict[date, Decimal]] = {}
        unreadable: dict[tuple[str, str], str] = {}

        async def one(c: _Customer, m: MeterInfo) -> None:
            assert c.stripe_customer_id is not None
            async with sem:
                try:
                    out[(c.customer_id, m.event_name)] = await self.stripe.daily_summaries(
                        m.stripe_meter_id, c.stripe_customer_id, ctx.window_start, ctx.window_end)
                except stripe.InvalidRequestError as e:
                    unreadable[(c.customer_id, m.event_name)] = f"Stripe refused the summary read: {e.user_message or e}"

        async with asyncio.TaskGroup() as tg:
            for c in batch:
                if c.stripe_customer_id:
                    for m in ctx.meters:
                        tg.create_task(one(c, m))
        return out, unreadable

    async def _flush_planned(self, ctx: RunContext, ids: list[str], now: datetime, counts: Counts) -> None:
        """Send outbox rows left `planned` by a crash between the outbox write and the send.

        Within Stripe's 24 h identifier window a re-send is safe (a duplicate is refused and
        read as "already sent"). Older than that it is not: such a row is taken as sent when it
        was planned, and the next comparison with Stripe's summary decides (lost -> re-push).

        A `planned` row whose key lock is held is not a crash leftover: another run (e.g. a
        backfill's next day, same customers) is between its outbox write and its send right
        now. It is left to that run; a crashed run's lock went with its connection."""
        async with self.pool.acquire() as conn:
            planned = await store.planned_pushes(conn, ids)
        for r in planned:
            lock_key = f"usage-key|{r['customer_id']}|{r['meter']}|{r['usage_day']}"
            async with self.pool.acquire() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", lock_key):
                    continue
                try:
                    if r["planned_at"] < now - RESEND_WINDOW:
                        await conn.execute(
                            "UPDATE billing.stripe_usage_pushes SET status = 'sent', sent_at = planned_at, "
                            "error = 'delivery unknown (planned over 23 h ago): taken as sent, checked "
                            "against the summary' WHERE identifier = $1 AND status = 'planned'", r["identifier"])
                    else:
                        await self._send_push(conn, r["identifier"], now, counts)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key)

    def _decide_status(self, ctx: RunContext, f: _Finding, inp: PageInput, counts: Counts) -> None:
        """What happens to a finding in this mode; counts it once."""
        kind = FindingKind(f.kind)
        if kind in (FindingKind.UNMAPPED_CUSTOMER, FindingKind.STRIPE_READ_FAILED,
                    FindingKind.UNMETERED_USAGE):
            return  # counted where found; nothing here can correct it
        if kind != FindingKind.PENDING:
            counts.drift_count += 1
        if f.beyond_epsilon:
            counts.beyond_epsilon += 1
        if f.over_quota_transition:
            counts.over_quota_transitions += 1
        if kind == FindingKind.PENDING:
            counts.pending += 1
            f.status = "pending"
            return
        if kind == FindingKind.NEEDS_INVOICE_ADJUSTMENT:
            counts.needs_invoice_adjustment += 1
            f.status = "unfixable"
            return
        if kind == FindingKind.ORPHAN_COUNTER:
            counts.orphan_counters += 1
        if inp.observe_only or ctx.mode == Mode.DRY_RUN:
            f.status = "observed"
        elif ctx.mode == Mode.PLAN:
            f.status = "proposed"
            counts.held_for_approval += 1
        elif f.params and f.params.get("needs_approval"):
            f.status = "held"
            counts.held_for_approval += 1
        else:
            f.status = "approved"  # becomes applied / failed / skipped once executed

    async def _record(self, ctx: RunContext, findings: list[_Finding]) -> None:
        if not findings:
            return
        rows = [(
            ctx.run_id, f.key, str(f.kind), f.customer_id, f.stripe_customer_id, f.meter, f.usage_day,
            f.period_start, f.ledger, f.counter, f.pushed, f.stripe,
            (f.ledger - (f.stripe if f.stripe is not None else (f.counter or Decimal(0))))
            if f.ledger is not None else None,
            diff_pct(f.ledger, f.stripe) if f.ledger is not None and f.stripe is not None else None,
            f.beyond_epsilon, f.action, _jsonable(f.params) if f.params else None, f.status, f.detail,
        ) for f in findings]
        async with self.pool.acquire() as conn:
            await conn.executemany(
                """
                INSERT INTO billing.discrepancies
                    (run_id, discrepancy_key, kind, customer_id, stripe_customer_id, meter, usage_day,
                     period_start, ledger_value, counter_value, pushed_value, stripe_value, diff,
                     diff_pct, beyond_epsilon, action, action_params, status, detail)
                VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)
                ON CONFLICT (run_id, discrepancy_key) DO UPDATE SET
                    kind = EXCLUDED.kind, ledger_value = EXCLUDED.ledger_value,
                    counter_value = EXCLUDED.counter_value, pushed_value = EXCLUDED.pushed_value,
                    stripe_value = EXCLUDED.stripe_value, diff = EXCLUDED.diff, diff_pct = EXCLUDED.diff_pct,
                    beyond_epsilon = EXCLUDED.beyond_epsilon, action = EXCLUDED.action,
                    action_params = EXCLUDED.action_params, status = EXCLUDED.status,
                    detail = EXCLUDED.detail, updated_at = now()
                """,
                rows,
            )

    # ------------------------------------------------------------------ applying a stored plan

    @activity.defn(name="usage.apply_plan_page")
    async def apply_plan_page(self, inp: ApplyPlanInput) -> PageResult:
        """Execute the stored plan of a run (proposed/held rows), one page of discrepancies."""
        ctx = inp.context
        details = activity.info().heartbeat_details
        checkpoint = PageCheckpoint.model_validate(details[0]) if details else PageCheckpoint()
        cursor = checkpoint.done_through or inp.cursor
        counts = checkpoint.counts
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT * FROM billing.discrepancies
                 WHERE run_id = $1 AND status IN ('proposed', 'held')
                   AND ($2::text IS NULL OR discrepancy_key > $2)
                 ORDER BY discrepancy_key LIMIT $3
                """,
                ctx.run_id, cursor, ctx.policy.page_size)
        async with _heartbeating(checkpoint) as beat:
            for i in range(0, len(rows), SUB_BATCH):
                batch = [_finding_from_row(r) for r in rows[i : i + SUB_BATCH]]
                if not inp.observe_only:  # paused: the plan stays as it is
                    await self._hold_if_paused()
                    counts = counts.add(await self._execute_all(ctx, batch))
                beat(PageCheckpoint(done_through=batch[-1].key, counts=counts))
        next_cursor = rows[-1]["discrepancy_key"] if len(rows) == ctx.policy.page_size else None
        return PageResult(next_cursor=next_cursor, counts=counts)

    async def _hold_if_paused(self) -> None:
        """The safety net behind the pause signal (which a run started a moment before the pause
        may miss): no corrective batch starts while auto-healing is paused. The activity fails
        retryably and resumes from its heartbeat checkpoint once `resume` clears the switch."""
        if await switch.paused(self.pool):
            raise ApplicationError("auto-healing is paused (billing-recon resume)", type="AutohealPaused")

    # ------------------------------------------------------------------ executing corrections

    async def _execute_all(self, ctx: RunContext, findings: list[_Finding]) -> Counts:
        sem = asyncio.Semaphore(self.settings.recon_stripe_concurrency)
        subs: list[Counts] = []

        async def one(f: _Finding) -> None:
            c = Counts()
            async with sem:
                await self._execute(ctx, f, c)
            subs.append(c)

        # A TaskGroup: if one correction fails, the others stop instead of writing on after
        # the activity has failed.
        async with asyncio.TaskGroup() as tg:
            for f in findings:
                tg.create_task(one(f))
        total = Counts()
        for c in subs:
            total = total.add(c)
        return total

    async def _execute(self, ctx: RunContext, f: _Finding, counts: Counts) -> None:
        params = f.params or {}
        if "counter" in params:
            if await self._set_counter(ctx, f, params["counter"]):
                counts.counter_repairs += 1
                status, detail = "applied", f.detail
            else:
                status, detail = "skipped", "counter changed since it was read; next run re-checks"
                counts.stale_skipped += 1
        else:
            status, detail = await self._apply_stripe(ctx, f, params, counts)
        await self._set_discrepancy_status(ctx, f.key, status, detail)

    async def _set_discrepancy_status(self, ctx: RunContext, key: str, status: str, detail: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE billing.discrepancies SET status = $3, detail = $4, updated_at = now() "
                "WHERE run_id = $1 AND discrepancy_key = $2", ctx.run_id, key, status, detail)

    async def _set_counter(self, ctx: RunContext, f: _Finding, p: dict[str, Any]) -> bool:
        """Compare-and-set: the counter is only overwritten if it still holds what we read, so a
        concurrent increment by the application is never lost."""
        period_start = date.fromisoformat(str(p["period_start"]))
        period_end = date.fromisoformat(str(p["period_end"]))
        before = None if p["expected_before"] is None else Decimal(str(p["expected_before"]))
        value = Decimal(str(p["value"]))
        entity = f"{f.customer_id}|{f.meter}|{period_start}"
        async with self.pool.acquire() as conn, conn.transaction():
            if before is None:
                res = await conn.execute(
                    """
                    INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
                    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
                    """, f.customer_id, f.meter, period_start, period_end, value)
            else:
                res = await conn.execute(
                    """
                    UPDATE billing.usage_counters SET value = $5, updated_at = now()
                     WHERE customer_id = $1 AND meter = $2 AND period_start = $3 AND value = $4
                    """, f.customer_id, f.meter, period_start, before, value)
            changed = not res.endswith(" 0")
            if changed:
                await _audit(conn, AuditInput(
                    actor=ctx.actor, action="set_usage_counter", entity_type="usage_counter",
                    entity_id=entity, reason=str(f.kind), customer_id=f.customer_id,
                    after={"before": _jsonable(before), "after": str(value),
                           "over_quota_transition": f.over_quota_transition},
                    workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                    idempotency_key=f"counter|{ctx.run_id}|{entity}"))
            return changed

    async def _apply_stripe(self, ctx: RunContext, f: _Finding, params: dict[str, Any],
                            counts: Counts) -> tuple[str, str]:
        """Cancel, mark lost, push: the corrections of one key, under a per-key lock.

        The lock and the check that the key's outbox still holds what the plan saw make two
        overlapping runs (or two attempts of one page) unable to correct the same key twice."""
        assert f.usage_day is not None and f.stripe_customer_id is not None
        day, meter = f.usage_day, f.meter
        lock_key = f"usage-key|{f.customer_id}|{meter}|{day}"
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock_key)
            try:
                current = await store.pushed_total(conn, f.customer_id, meter, day)
                if current != _dec(params.get("expected_pushed")):
                    counts.stale_skipped += 1
                    return "skipped", "the key's outbox changed since this was planned; the next run re-plans"
                return await self._apply_stripe_locked(conn, ctx, f, params, counts)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key)

    async def _apply_stripe_locked(self, conn: asyncpg.Connection, ctx: RunContext, f: _Finding,
                                   params: dict[str, Any], counts: Counts) -> tuple[str, str]:
        day, meter = f.usage_day, f.meter
        assert day is not None
        status, detail = "applied", ""
        planned: list[dict[str, Any]] = []
        if params.get("push"):
            p = params["push"]
            planned.append({**p, "value": Decimal(str(p["value"])),
                            "event_timestamp": datetime.fromisoformat(str(p["event_timestamp"]))})

        for ident in params.get("cancel", []):
            row = await conn.fetchrow(
                "SELECT value, status FROM billing.stripe_usage_pushes WHERE identifier = $1", ident)
            if row is None or row["status"] == "cancelled":
                continue
            outcome, msg = await self.stripe.cancel_meter_event(identifier=ident, event_name=meter)
            counts.stripe_writes += 1
            if outcome == CancelOutcome.CANCELLED:
                counts.corrections_cancelled += 1
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE billing.stripe_usage_pushes SET status = 'cancelled', cancelled_at = $2 "
                        "WHERE identifier = $1", ident, _now())
                    await _audit(conn, AuditInput(
                        actor=ctx.actor, action="cancel_meter_event", entity_type="meter_event",
                        entity_id=ident, reason=str(f.kind), customer_id=f.customer_id, after={"value": str(row["value"])},
                        workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                        idempotency_key=f"cancel|{ident}"))
            elif outcome == CancelOutcome.NOT_FOUND:
                # Stripe never counted it: nothing to take back, and it is not ours any more.
                await conn.execute(
                    "UPDATE billing.stripe_usage_pushes SET status = 'failed', error = $2 WHERE identifier = $1",
                    ident, msg[:500])
            elif outcome == CancelOutcome.TOO_OLD:
                # Past Stripe's 24 h: compensate this one instead, under its own identifier.
                planned.append({"identifier": fallback_compensation_identifier(ident),
                                "value": -_dec(row["value"]), "kind": "compensation",
                                "event_timestamp": datetime.fromisoformat(str(params["timestamp"])),
                                "replaces": ident})
                log.info("cancel of %s refused (%s); compensating", ident, msg)
            else:
                counts.reconcile_failures += 1
                status, detail = "failed", f"Stripe refused to cancel {ident}: {msg}"[:500]

        if params.get("mark_failed"):
            await conn.execute(
                "UPDATE billing.stripe_usage_pushes SET status = 'failed', error = 'not reflected in "
                "Stripe after the settle window' WHERE identifier = ANY($1) "
                "AND status IN ('sent', 'confirmed')", params["mark_failed"])

        for p in planned:
            async with conn.transaction():
                inserted = await conn.fetchval(
                    """
                    INSERT INTO billing.stripe_usage_pushes
                        (identifier, customer_id, stripe_customer_id, meter, usage_day, value,
                         event_timestamp, kind, status, replaces, run_id, workflow_id, workflow_run_id)
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'planned',$9,$10,$10,$11)
                    ON CONFLICT (identifier) DO NOTHING RETURNING 1
                    """,
                    p["identifier"], f.customer_id, f.stripe_customer_id, meter, day, p["value"],
                    p["event_timestamp"], p["kind"], p.get("replaces"), ctx.run_id, ctx.workflow_run_id)
                if inserted:
                    await _audit(conn, AuditInput(
                        actor=ctx.actor, action=f"push_meter_event:{p['kind']}", entity_type="meter_event",
                        entity_id=p["identifier"], reason=str(f.kind), customer_id=f.customer_id,
                        after={"customer_id": f.customer_id, "meter": meter, "day": day.isoformat(),
                               "value": str(p["value"])},
                        workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                        idempotency_key=f"push|{p['identifier']}"))
            # Just inserted: the row is exactly `p`, no need to read it back.
            result = await self._send_push(conn, p["identifier"], _now(), counts, row={
                "meter": meter, "stripe_customer_id": f.stripe_customer_id, "value": p["value"],
                "event_timestamp": p["event_timestamp"]} if inserted else None)
            if result is None and not inserted:
                status, detail = "skipped", f"correction {p['identifier']} already handled earlier"
            elif result == PushOutcome.TOO_OLD:
                status, detail = "unfixable", "Stripe refused the timestamp (35-day window)"
            elif result == PushOutcome.REJECTED:
                status, detail = "failed", "Stripe rejected the correction; see the outbox row"
        return status, detail

    async def _send_push(self, conn: asyncpg.Connection, identifier: str, now: datetime,
                         counts: Counts, row: Mapping[str, Any] | None = None) -> PushOutcome | None:
        """Send one outbox row that is still `planned`, exactly as stored; mark it by outcome.
        `row`: the row as this connection just inserted it under the key's lock (else it is
        read). Transient errors raise (the activity retries and the row is sent again).

        A row that is read is locked while it is sent: two runs over overlapping keys (a
        backfill's days run side by side) never both send it; the second skips it, and only the
        sender counts it."""
        if row is not None:
            return await self._push_row(conn, identifier, row, now, counts)
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM billing.stripe_usage_pushes WHERE identifier = $1 AND status = 'planned' "
                "FOR UPDATE SKIP LOCKED", identifier)
            if row is None:
                return None
            return await self._push_row(conn, identifier, row, now, counts)

    async def _push_row(self, conn: asyncpg.Connection, identifier: str, row: Mapping[str, Any],
                        now: datetime, counts: Counts) -> PushOutcome:
        outcome, msg = await self.stripe.push_meter_event(
            identifier=identifier, event_name=row["meter"], stripe_customer_id=row["stripe_customer_id"],
            value=to_stripe_value(_dec(row["value"])), timestamp=row["event_timestamp"])
        counts.stripe_writes += 1
        if outcome in (PushOutcome.SENT, PushOutcome.ALREADY_SENT):
            counts.corrections_pushed += 1
            await conn.execute(
                "UPDATE billing.stripe_usage_pushes SET status = 'sent', sent_at = $2 "
                "WHERE identifier = $1 AND status = 'planned'", identifier, now)
        else:
            counts.reconcile_failures += 1
            await conn.execute(
                "UPDATE billing.stripe_usage_pushes SET status = 'failed', error = $2 "
                "WHERE identifier = $1 AND status = 'planned'", identifier, msg[:500])
        return outcome


def _stripe_finding(c: _Customer, m: MeterInfo, day: date, f: StripeFinding) -> _Finding:
    action = None
    params: dict[str, Any] | None = None
    if f.push or f.cancel:
        action = "+".join(x for x in [
            "cancel" if f.cancel else "", f"push_{f.push.kind}" if f.push else ""] if x)
        params = {
            "expected_pushed": f.pushed,
            "needs_approval": f.needs_approval,
            "cancel": f.cancel,
            "mark_failed": f.mark_failed,
            "timestamp": f.push.event_timestamp if f.push else None,
            "push": None if not f.push else {
                "identifier": f.push.identifier, "value": f.push.value, "kind": f.push.kind,
                "event_timestamp": f.push.event_timestamp, "replaces": f.push.replaces},
        }
        if params["timestamp"] is None:
            params["timestamp"] = push_timestamp(day, _now())
    return _Finding(
        key=f"stripe|{c.customer_id}|{m.event_name}|{day}", kind=f.kind, customer_id=c.customer_id,
        stripe_customer_id=c.stripe_customer_id, meter=m.event_name, usage_day=day,
        ledger=f.ledger, pushed=f.pushed, stripe=f.stripe, beyond_epsilon=f.beyond_epsilon,
        action=action, params=params, detail=f.detail)


def _finding_from_row(r: asyncpg.Record) -> _Finding:
    params = r["action_params"]
    if isinstance(params, str):
        params = json.loads(params)
    return _Finding(
        key=r["discrepancy_key"], kind=r["kind"], customer_id=r["customer_id"],
        stripe_customer_id=r["stripe_customer_id"], meter=r["meter"], usage_day=r["usage_day"],
        period_start=r["period_start"], ledger=r["ledger_value"], counter=r["counter_value"],
        pushed=r["pushed_value"], stripe=r["stripe_value"], beyond_epsilon=r["beyond_epsilon"],
        action=r["action"], params=params, status=r["status"], detail=r["detail"] or "")


async def _audit(conn: asyncpg.Connection, a: AuditInput) -> None:
    await conn.execute(
        """
        INSERT INTO billing.audit_log
            (actor, action, entity_type, entity_id, after, reason, workflow_id, run_id, idempotency_key,
             customer_id, before, correlation_id)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11::jsonb, $12)
        ON CONFLICT (idempotency_key) DO NOTHING
        """,
        a.actor, a.action, a.entity_type, a.entity_id, a.after, a.reason, a.workflow_id, a.run_id,
        a.idempotency_key, a.customer_id, a.before, correlation.current() or a.workflow_id,
    )
