"""The correction writer: applies findings' correction plans through the outbox, exactly once.

Exactly-once: every Stripe write is first recorded in `billing.stripe_usage_pushes` under a
deterministic identifier (status `planned`), then sent, then marked `sent`. A crash anywhere
leaves either a `planned` row (sent again under the same identifier before anything else is
decided; Stripe refuses a second copy within 24 h, which we read as "already sent") or a `sent`
row (counted in P, so the key is `pending`, never pushed again). Corrections of one key run
under a Postgres advisory lock on (customer, meter, day), after re-checking the key against the
ledger, the outbox and Stripe: only what is still right is applied, the rest is `stale`.
Counters are set by compare-and-set, after re-checking the period's ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import stripe

from billing.periods import push_timestamp, push_window
from billing.policy import (
    PlannedPush,
    PushKind,
    PushStatus,
    classify_stripe_key,
    fallback_compensation_identifier,
    recheck_correction,
    to_stripe_value,
)
from billing.stripe_gateway import CancelOutcome, PushOutcome, StripeGateway
from common.audit import AuditAction, AuditInput, write_audit
from reconcile import periods_store, store
from reconcile.adjustments import AdjustmentWriter
from reconcile.plans import CounterCorrection, Finding, InvoiceAdjustment, StripeCorrection
from reconcile.runs import is_data_error
from reconcile.types import Counts, DiscrepancyStatus, RunContext

log = logging.getLogger(__name__)

# Stripe dedupes identifiers for at least 24 h: a `planned` row younger than this is re-sent.
RESEND_WINDOW = timedelta(hours=23)
# A plan's Stripe value read no longer ago than this is the apply-time re-check's (an apply
# page's corrections follow their batch's summary reads within seconds); older, or a stored
# plan applied after its approval, and the key's summary is read again.
FRESH_SUMMARY = timedelta(seconds=60)


def _now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def _key_locked(conn: asyncpg.Connection, customer_id: str, meter: str, day: date, *,
                      wait: bool = True) -> AsyncIterator[bool]:
    """Hold the advisory lock of one key (customer, meter, UTC day) for the block: it is held
    while the key is corrected or its planned push sent. With wait=False, yields False at once
    (and holds nothing) when another session holds it."""
    name = f"usage-key|{customer_id}|{meter}|{day}"
    if wait:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", name)
    elif not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name):
        yield False
        return
    try:
        yield True
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", name)


class CorrectionWriter:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway, concurrency: int) -> None:
        self.pool = pool
        self.stripe = stripe
        self.concurrency = concurrency
        self.adjustments = AdjustmentWriter(pool, stripe)

    # ------------------------------------------------------------------ outbox upkeep

    async def flush_planned(self, customer_ids: list[str], now: datetime, counts: Counts) -> None:
        """Send outbox rows left `planned` by a crash between the outbox write and the send.

        Within Stripe's 24 h identifier window a re-send is safe (a duplicate is refused and
        read as "already sent"). Older than that it is not: such a row is taken as sent when it
        was planned, and the next comparison with Stripe's summary decides (lost -> re-push).

        A `planned` row whose key lock is held is not a crash leftover: another run (e.g. a
        backfill's next day, same customers) is between its outbox write and its send right
        now. It is left to that run; a crashed run's lock went with its connection."""
        async with self.pool.acquire() as conn:
            planned = await store.planned_pushes(conn, customer_ids)
        for r in planned:
            async with (self.pool.acquire() as conn,
                        _key_locked(conn, r["customer_id"], r["meter"], r["usage_day"], wait=False) as mine):
                if not mine:
                    continue
                if r["planned_at"] < now - RESEND_WINDOW:
                    await conn.execute(
                        "UPDATE billing.stripe_usage_pushes SET status = $2, sent_at = planned_at, "
                        "error = 'delivery unknown (planned over 23 h ago): taken as sent, checked "
                        "against the summary' WHERE identifier = $1 AND status = $3",
                        r["identifier"], PushStatus.SENT, PushStatus.PLANNED)
                else:
                    await self._send_stored(conn, r["identifier"], now, counts)

    async def confirm(self, identifiers: list[str]) -> None:
        """Our `sent` pushes that Stripe's summary now reflects."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE billing.stripe_usage_pushes SET status = $2, settled_at = now() "
                "WHERE identifier = ANY($1) AND status = $3",
                identifiers, PushStatus.CONFIRMED, PushStatus.SENT)

    # ------------------------------------------------------------------ applying findings

    async def apply_all(self, ctx: RunContext, findings: list[Finding], *,
                        stripe_read_at: datetime | None = None) -> Counts:
        """Apply the findings' plans (concurrently, bounded) and record each one's outcome.

        Each key is re-checked first against the ledger, our outbox and Stripe now, and only
        what is still right is applied (`_correct_key`). `stripe_read_at`: when the findings'
        Stripe values were read; read again per key when older than FRESH_SUMMARY or unknown
        (a stored plan applied after its approval)."""
        fresh_s = stripe_read_at is not None and _now() - stripe_read_at <= FRESH_SUMMARY
        sem = asyncio.Semaphore(self.concurrency)
        subs: list[Counts] = []

        async def one(f: Finding) -> None:
            c = Counts()
            async with sem:
                try:
                    await self._apply(ctx, f, c, reread_stripe=not fresh_s)
                except Exception as e:
                    if not is_data_error(e):
                        raise  # transient: the activity retries
                    # This key's data breaks the write (e.g. a value Postgres cannot store):
                    # reported on the key, the other corrections go on.
                    c = Counts(reconcile_failures=1)
                    await store.set_finding_status(
                        self.pool, ctx.run_id, f.key, DiscrepancyStatus.FAILED,
                        f"could not apply: {type(e).__name__}: {e}"[:500])
            subs.append(c)

        # A TaskGroup: if one correction fails, the others stop instead of writing on after
        # the activity has failed.
        async with asyncio.TaskGroup() as tg:
            for f in findings:
                if f.plan is not None:
                    tg.create_task(one(f))
        total = Counts()
        for c in subs:
            total = total.add(c)
        return total

    async def _apply(self, ctx: RunContext, f: Finding, counts: Counts, *, reread_stripe: bool) -> None:
        if isinstance(f.plan, CounterCorrection):
            stale = await self._set_counter(ctx, f, f.plan)
            if not stale:
                counts.counter_repairs += 1
                status, detail = DiscrepancyStatus.APPLIED, f.detail
            else:
                status, detail = DiscrepancyStatus.STALE, f"{stale}; re-planned by the next scan"
                counts.stale_skipped += 1
        elif isinstance(f.plan, InvoiceAdjustment):
            status, detail = await self.adjustments.apply(ctx, f, f.plan, counts)
        else:
            assert isinstance(f.plan, StripeCorrection)
            status, detail = await self._correct_key(ctx, f, f.plan, counts, reread_stripe=reread_stripe)
        await store.set_finding_status(self.pool, ctx.run_id, f.key, status, detail)

    async def _set_counter(self, ctx: RunContext, f: Finding, plan: CounterCorrection) -> str:
        """Compare-and-set, after re-checking the ledger: the counter is only overwritten if the
        period's ledger still sums to the planned value and the counter still holds what we
        read (a concurrent increment by the application is never lost). Returns why not ("":
        it was set)."""
        c = plan.counter
        entity = f"{f.customer_id}|{f.meter}|{c.period_start}"
        async with self.pool.acquire() as conn, conn.transaction():
            # The period the scan summed (the counter's own, billing/periods.py).
            ledger, invalid = await store.key_ledger(conn, f.customer_id, f.meter, c.period_start,
                                                     c.period_end)
            if invalid or ledger != c.value:
                return f"the period's ledger changed since it was read ({c.value} -> {ledger})" + (
                    f", {invalid} unusable row(s)" if invalid else "")
            if c.expected_before is None:
                res = await conn.execute(
                    """
                    INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
                    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
                    """, f.customer_id, f.meter, c.period_start, c.period_end, c.value)
            else:
                res = await conn.execute(
                    """
                    UPDATE billing.usage_counters SET value = $5, updated_at = now()
                     WHERE customer_id = $1 AND meter = $2 AND period_start = $3 AND value = $4
                    """, f.customer_id, f.meter, c.period_start, c.expected_before, c.value)
            changed = not res.endswith(" 0")
            if changed:
                await write_audit(conn, AuditInput(
                    actor=ctx.actor, action=AuditAction.USAGE_SET_COUNTER, entity_type="usage_counter",
                    entity_id=entity, reason=str(f.kind), customer_id=f.customer_id,
                    after={"before": None if c.expected_before is None else str(c.expected_before),
                           "after": str(c.value), "over_quota_transition": f.over_quota_transition},
                    workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                    idempotency_key=f"counter|{ctx.run_id}|{entity}"))
            return "" if changed else "the counter changed since it was read"

    async def _correct_key(self, ctx: RunContext, f: Finding, plan: StripeCorrection,
                           counts: Counts, *, reread_stripe: bool) -> tuple[DiscrepancyStatus, str]:
        """Cancel, mark lost, push: the corrections of one key, under a per-key lock, and only
        as far as they are still right (DESIGN.md 10: never applied blind).

        Under the lock, the key is classified again from the ledger and our outbox now and
        Stripe's value (read again unless the plan's is a few seconds old), and
        `billing.policy.recheck_correction` keeps the parts of the plan that still move Stripe
        toward the ledger without crossing it. A dropped part makes the finding `stale`: the
        next scan (the run's own verify pass, or the next run) finds the key again. The lock
        and the re-check make two overlapping runs (or two attempts of one page) unable to
        correct the same key twice."""
        day = f.usage_day
        assert day is not None and f.stripe_customer_id is not None
        async with (self.pool.acquire() as conn,
                    _key_locked(conn, f.customer_id, f.meter, day)):
            ledger, invalid = await store.key_ledger(conn, f.customer_id, f.meter, day, day + timedelta(days=1))
            if invalid:
                counts.stale_skipped += 1
                return DiscrepancyStatus.STALE, f"the key now holds {invalid} unusable usage row(s); not applied"
            pushes = await store.key_pushes(conn, f.customer_id, f.meter, day)
            stripe_value = f.stripe if f.stripe is not None and not reread_stripe else None
            if stripe_value is None:
                try:
                    stripe_value = await self._stripe_value(ctx, f, day)
                except stripe.InvalidRequestError as e:
                    counts.reconcile_failures += 1
                    return (DiscrepancyStatus.FAILED,
                            f"Stripe refused the summary read of the apply-time re-check: {e.user_message or e}"[:500])
            p = ctx.policy
            # The key's billing period now: a plan made in a grace window is not pushed once the
            # invoice is final (then the fresh reading is needs_invoice_adjustment: stale).
            item = (await periods_store.item_periods(conn, ctx, [f.customer_id])).get((f.customer_id, f.meter))
            window = push_window(day, _now(), item, timedelta(seconds=p.invoice_grace_seconds)) if item else None
            fresh = classify_stripe_key(
                customer_id=f.customer_id, meter=f.meter, day=day, ledger=ledger, stripe=stripe_value,
                pushes=pushes, now=_now(), settle=timedelta(seconds=p.settle_seconds), epsilon=p.epsilon,
                auto_approve_over_reporting=p.auto_approve_over_reporting, window=window)
            rc = recheck_correction(cancel=plan.cancel, mark_failed=plan.mark_failed,
                                    push=plan.push.value if plan.push else None, fresh=fresh, pushes=pushes)
            if rc.stale:
                counts.stale_skipped += 1
            if not rc.anything:
                return DiscrepancyStatus.STALE, f"{rc.stale}; not applied, re-planned by the next scan"[:500]
            kept = plan.model_copy(update={"cancel": rc.cancel, "mark_failed": rc.mark_failed,
                                           "push": plan.push if rc.push else None})
            final = await periods_store.final_in_stripe(self.stripe, item, kept.push)
            if final:
                counts.stale_skipped += 1
                return DiscrepancyStatus.STALE, f"{final}; not pushed, judged with the invoice by the next run"
            status, detail = await self._correct_key_locked(conn, ctx, f, kept, counts)
            if rc.stale and status == DiscrepancyStatus.APPLIED:
                return DiscrepancyStatus.STALE, f"applied {kept.action or 'marking lost pushes'} only: {rc.stale}"[:500]
            return status, detail

    async def _stripe_value(self, ctx: RunContext, f: Finding, day: date) -> Decimal:
        """Stripe's value of one key now (one summary read of one day)."""
        meter_id = next(m.stripe_meter_id for m in ctx.meters if m.event_name == f.meter)
        assert f.stripe_customer_id is not None
        values = await self.stripe.daily_summaries(meter_id, f.stripe_customer_id, day, day, lane=ctx.budget_lane)
        return values.get(day, Decimal(0))

    async def _correct_key_locked(self, conn: asyncpg.Connection, ctx: RunContext, f: Finding,
                                  plan: StripeCorrection, counts: Counts) -> tuple[DiscrepancyStatus, str]:
        day, meter, stripe_customer_id = f.usage_day, f.meter, f.stripe_customer_id
        assert day is not None and stripe_customer_id is not None
        status, detail = DiscrepancyStatus.APPLIED, ""
        pushes: list[PlannedPush] = [plan.push] if plan.push else []

        for ident in plan.cancel:
            row = await conn.fetchrow(
                "SELECT value, status FROM billing.stripe_usage_pushes WHERE identifier = $1", ident)
            if row is None or row["status"] == PushStatus.CANCELLED:
                continue
            outcome, msg = await self.stripe.cancel_meter_event(identifier=ident, event_name=meter)
            counts.stripe_writes += 1
            if outcome == CancelOutcome.CANCELLED:
                counts.corrections_cancelled += 1
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE billing.stripe_usage_pushes SET status = $2, cancelled_at = $3 "
                        "WHERE identifier = $1", ident, PushStatus.CANCELLED, _now())
                    await write_audit(conn, AuditInput(
                        actor=ctx.actor, action=AuditAction.USAGE_CANCEL_METER_EVENT, entity_type="meter_event",
                        entity_id=ident, reason=str(f.kind), customer_id=f.customer_id, after={"value": str(row["value"])},
                        workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                        idempotency_key=f"cancel|{ident}"))
            elif outcome == CancelOutcome.NOT_FOUND:
                # Stripe never counted it: nothing to take back, and it is not ours any more.
                await conn.execute(
                    "UPDATE billing.stripe_usage_pushes SET status = $3, error = $2 WHERE identifier = $1",
                    ident, msg[:500], PushStatus.FAILED)
            elif outcome == CancelOutcome.TOO_OLD:
                # Past Stripe's 24 h: compensate this one instead, under its own identifier.
                ts = plan.timestamp or push_timestamp(day, _now())
                if ts is None:
                    status, detail = DiscrepancyStatus.UNFIXABLE, "Stripe refused the timestamp (35-day window)"
                    continue
                pushes.append(PlannedPush(fallback_compensation_identifier(ident), -Decimal(row["value"]),
                                          PushKind.COMPENSATION, ts, replaces=ident))
                log.info("cancel of %s refused (%s); compensating", ident, msg)
            else:
                counts.reconcile_failures += 1
                status, detail = DiscrepancyStatus.FAILED, f"Stripe refused to cancel {ident}: {msg}"[:500]

        if plan.mark_failed:
            await conn.execute(
                "UPDATE billing.stripe_usage_pushes SET status = $2, error = 'not reflected in "
                "Stripe after the settle window' WHERE identifier = ANY($1) "
                "AND status = ANY($3::text[])",
                plan.mark_failed, PushStatus.FAILED, [PushStatus.SENT, PushStatus.CONFIRMED])

        for p in pushes:
            async with conn.transaction():
                inserted = await conn.fetchval(
                    """
                    INSERT INTO billing.stripe_usage_pushes
                        (identifier, customer_id, stripe_customer_id, meter, usage_day, value,
                         event_timestamp, kind, status, replaces, run_id, workflow_id, workflow_run_id)
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$12,$9,$10,$10,$11)
                    ON CONFLICT (identifier) DO NOTHING RETURNING 1
                    """,
                    p.identifier, f.customer_id, stripe_customer_id, meter, day, p.value,
                    p.event_timestamp, p.kind, p.replaces, ctx.run_id, ctx.workflow_run_id,
                    PushStatus.PLANNED)
                if inserted:
                    await write_audit(conn, AuditInput(
                        actor=ctx.actor, action=AuditAction.USAGE_PUSH_METER_EVENT, entity_type="meter_event",
                        entity_id=p.identifier, reason=str(f.kind), customer_id=f.customer_id,
                        after={"customer_id": f.customer_id, "meter": meter, "day": day.isoformat(),
                               "value": str(p.value), "kind": str(p.kind)},
                        workflow_id=ctx.run_id, run_id=ctx.workflow_run_id,
                        idempotency_key=f"push|{p.identifier}"))
            if inserted:
                # Just inserted under the key's lock: the row is exactly `p`, no read-back.
                result: PushOutcome | None = await self._send(
                    conn, p.identifier, meter, stripe_customer_id, p.value, p.event_timestamp,
                    _now(), counts)
            else:
                result = await self._send_stored(conn, p.identifier, _now(), counts)
            if result is None and not inserted:
                status, detail = DiscrepancyStatus.SKIPPED, f"correction {p.identifier} already handled earlier"
            elif result == PushOutcome.TOO_OLD:
                status, detail = DiscrepancyStatus.UNFIXABLE, "Stripe refused the timestamp (35-day window)"
            elif result == PushOutcome.REJECTED:
                status, detail = DiscrepancyStatus.FAILED, "Stripe rejected the correction; see the outbox row"
        return status, detail

    # ------------------------------------------------------------------ sending

    async def _send_stored(self, conn: asyncpg.Connection, identifier: str, now: datetime,
                           counts: Counts) -> PushOutcome | None:
        """Send one outbox row that is still `planned`, exactly as stored (None: it is not).

        The row is locked while it is sent: two runs over overlapping keys (a backfill's days
        run side by side) never both send it; the second skips it, and only the sender counts
        it."""
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM billing.stripe_usage_pushes WHERE identifier = $1 AND status = $2 "
                "FOR UPDATE SKIP LOCKED", identifier, PushStatus.PLANNED)
            if row is None:
                return None
            return await self._send(conn, identifier, row["meter"], row["stripe_customer_id"],
                                    Decimal(row["value"]), row["event_timestamp"], now, counts)

    async def _send(self, conn: asyncpg.Connection, identifier: str, meter: str,
                    stripe_customer_id: str, value: Decimal, event_timestamp: datetime,
                    now: datetime, counts: Counts) -> PushOutcome:
        """Push one `planned` outbox row and mark it by outcome. Transient errors raise (the
        activity retries and the row is sent again under the same identifier)."""
        outcome, msg = await self.stripe.push_meter_event(
            identifier=identifier, event_name=meter, stripe_customer_id=stripe_customer_id,
            value=to_stripe_value(value), timestamp=event_timestamp)
        counts.stripe_writes += 1
        if outcome in (PushOutcome.SENT, PushOutcome.ALREADY_SENT):
            counts.corrections_pushed += 1
            await conn.execute(
                "UPDATE billing.stripe_usage_pushes SET status = $3, sent_at = $2 "
                "WHERE identifier = $1 AND status = $4", identifier, now, PushStatus.SENT,
                PushStatus.PLANNED)
        else:
            counts.reconcile_failures += 1
            await conn.execute(
                "UPDATE billing.stripe_usage_pushes SET status = $3, error = $2 "
                "WHERE identifier = $1 AND status = $4", identifier, msg[:500], PushStatus.FAILED,
                PushStatus.PLANNED)
        return outcome
