"""The change-driven usage sync (`UsageTick`, DESIGN.md "Three paths": the tick).

A tick touches only keys (customer, meter, UTC day) that can have changed:
- keys whose ledger changed since they were last synced: `billing.usage_daily`, the rollup
  Postgres keeps with triggers (migration 0021), read through its partial index
  (`changed_seq > synced_seq`), so the ledger cost grows with the changed keys, not the table;
- keys an async meter error or a lost push named (`billing.usage_sync_queue`);
- keys with our pushes done settling (`sent` for longer than the settle window).

Changed and queued keys are synced from our outbox alone: L - P is pushed (P = our live
pushes), no summary read. Settled keys are the only reads: one summary per (customer, meter),
compared with the ledger by `billing.policy.classify_stripe_key`; reflected pushes are
confirmed, lost ones marked failed and pushed again, anything else is left to the full pass or
the rolling read-back (over-reporting by another system is what only Stripe knows). Counters of
the changed keys' periods are set to the rollup's sum (compare-and-set, audited).

Exactly once, as in the full pass: a push is an outbox row under an identifier derived from the
key and the outbox state (`correction_identifier`), inserted before it is sent, under the key's
lock; rows a crash left `planned` are sent again under the same identifier first
(`flush_planned`), and a key is marked synced only after its push is recorded."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
from temporalio import activity

from autoheal import switch
from billing.periods import ItemPeriod, period_of, push_timestamp, push_window
from billing.policy import (
    LIVE_STATUSES,
    FindingKind,
    PlannedPush,
    PushKind,
    PushStatus,
    _tolerance,
    classify_stripe_key,
    correction_identifier,
)
from billing.settings import Settings
from billing.stripe_gateway import PushOutcome, StripeGateway
from common.audit import AuditAction, AuditInput, write_audit
from reconcile import periods_store, store
from reconcile.corrections import CorrectionWriter, _key_locked
from reconcile.tick_types import TickCounts, TickPageInput, TickPageResult
from reconcile.types import Counts, MeterInfo, RunContext
from webhooks.meter_errors import sweep_reports

log = logging.getLogger(__name__)

# Stripe accepts meter event timestamps within the last 35 days: older changed days cannot be
# pushed (the full pass reports them as needing an invoice adjustment).
STRIPE_WINDOW_DAYS = 35
# Keys synced side by side within a page (each holds a pooled connection and its key's lock).
KEY_CONCURRENCY = 8
# Keys are written under the full pass's own key lock (`_key_locked`): a tick and a full pass
# never correct one key at once.
LOST_REASON = "lost_push"

Key = tuple[str, str, date]


def _now() -> datetime:
    return datetime.now(UTC)


class TickWriter(CorrectionWriter):
    """The correction writer's outbox and send, for pushes planned from the outbox alone."""

    async def push(self, conn: asyncpg.Connection, inp: TickPageInput, key: Key, stripe_customer_id: str,
                   push: PlannedPush, counts: TickCounts) -> None:
        customer_id, meter, day = key
        async with conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO billing.stripe_usage_pushes
                    (identifier, customer_id, stripe_customer_id, meter, usage_day, value,
                     event_timestamp, kind, status, run_id, workflow_id, workflow_run_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'planned', $9, $9, $10)
                ON CONFLICT (identifier) DO NOTHING RETURNING 1
                """, push.identifier, customer_id, stripe_customer_id, meter, day, push.value,
                push.event_timestamp, push.kind, inp.run_id, inp.workflow_run_id)
            if inserted:
                await write_audit(conn, AuditInput(
                    actor=inp.actor, action=AuditAction.USAGE_PUSH_METER_EVENT, entity_type="meter_event",
                    entity_id=push.identifier, reason="usage_tick", customer_id=customer_id,
                    after={"customer_id": customer_id, "meter": meter, "day": day.isoformat(),
                           "value": str(push.value), "kind": str(push.kind)},
                    workflow_id=inp.run_id, run_id=inp.workflow_run_id, idempotency_key=f"push|{push.identifier}"))
        sent = Counts()
        outcome = await self._send_stored(conn, push.identifier, _now(), sent)
        counts.stripe_writes += sent.stripe_writes
        counts.pushed += sent.corrections_pushed
        if outcome in (PushOutcome.TOO_OLD, PushOutcome.REJECTED):
            counts.push_failures += 1


class TickActivities:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway, settings: Settings) -> None:
        self.pool = pool
        self.stripe = stripe
        self.settings = settings
        self.writer = TickWriter(pool, stripe, concurrency=KEY_CONCURRENCY)
        self._meters: dict[str, str] = {}  # event name -> Stripe meter id, read once per worker
        self._meters_lock = asyncio.Lock()  # the read-back and the pushes may ask at once: one read

    async def _meter_ids(self, names: set[str], counts: TickCounts) -> dict[str, str]:
        async with self._meters_lock:
            if not names <= set(self._meters):  # first use, or a meter created since
                self._meters = {m.event_name: m.id for m in await self.stripe.list_meters()}
                counts.stripe_reads += 1
        return self._meters

    async def _items(self, keys: list[Key], counts: TickCounts) -> dict[tuple[str, str], ItemPeriod]:
        """The metered subscription items billing the keys (their periods and push windows)."""
        meters = await self._meter_ids({k[1] for k in keys}, counts)
        # item_periods reads only the context's meters.
        ctx = RunContext.model_construct(meters=[MeterInfo(event_name=n, stripe_meter_id=i) for n, i in meters.items()])
        async with self.pool.acquire() as conn:
            return await periods_store.item_periods(conn, ctx, sorted({k[0] for k in keys}))

    @activity.defn(name="usage_tick.observe_only")
    async def observe_only(self) -> bool:
        """Whether auto-healing is paused (then the tick only reports)."""
        return await switch.paused(self.pool)

    @property
    def _grace(self) -> timedelta:
        return timedelta(seconds=self.settings.recon_invoice_grace_seconds)

    @activity.defn(name="usage_tick.settle_seconds")
    async def settle_seconds(self) -> int:
        """RECON_SETTLE_SECONDS: how long a push may take to show in Stripe's summaries."""
        return self.settings.recon_settle_seconds

    @activity.defn(name="usage_tick.page")
    async def page(self, inp: TickPageInput) -> TickPageResult:
        counts = TickCounts()
        now = _now()
        oldest = now.date() - timedelta(days=STRIPE_WINDOW_DAYS - 1)
        paused = inp.write and await switch.paused(self.pool)
        if paused:
            inp = inp.model_copy(update={"write": False})
        if inp.page == 0 and inp.write:
            counts.reports_swept = await sweep_reports(self.pool, self.stripe)
        async with asyncio.TaskGroup() as tg:
            # The first page reads back the settled keys BESIDE the pushes, and goes on with the
            # next keys while that read-back lasts: it waits on the summary endpoint's budget
            # (25/s), the pushes on the account's; one after the other they add up (500 reads
            # alone take 25 s at 20/s). A key both read back and changed is taken by one at a
            # time (the key lock); a push in flight makes the read-back's comparison pending,
            # never a second push. A pause is still seen within one page of keys.
            verify = tg.create_task(self._verify_settled(inp, now, oldest, counts)) if inp.page == 0 else None
            more = await self._sync_changed(inp, now, oldest, counts)
            while more and verify is not None and not verify.done() and not await switch.paused(self.pool):
                more = await self._sync_changed(inp, now, oldest, counts)
        return TickPageResult(counts=counts, more=more, paused=paused)

    async def _sync_changed(self, inp: TickPageInput, now: datetime, oldest: date, counts: TickCounts) -> bool:
        """One page of queued and changed keys, KEY_CONCURRENCY at a time; whether more wait."""
        keys, more = await self._keys_to_sync(inp, oldest, counts)
        if keys:
            mapping = dict(await self.pool.fetch(
                "SELECT customer_id, stripe_customer_id FROM billing.customers WHERE customer_id = ANY($1)",
                sorted({k[0] for k in keys})))
            if inp.write:
                flushed = Counts()
                await self.writer.flush_planned(sorted(mapping), now, flushed)
                counts.stripe_writes += flushed.stripe_writes
            items = await self._items(list(keys), counts)
            sem = asyncio.Semaphore(KEY_CONCURRENCY)

            async def one(key: Key, seen: int | None) -> None:
                async with sem:
                    await self._sync_key(inp, key, seen, mapping.get(key[0]), items.get(key[:2]), counts)
                    activity.heartbeat()

            async with asyncio.TaskGroup() as tg:
                for key, seen in keys.items():
                    tg.create_task(one(key, seen))
            if inp.write:
                await self._repair_counters(inp, keys, items, counts)
        return more

    # ------------------------------------------------------------------ which keys

    async def _keys_to_sync(self, inp: TickPageInput, oldest: date,
                            counts: TickCounts) -> tuple[dict[Key, int | None], bool]:
        """Queued keys first, then changed ones (oldest change first): key -> the changed_seq
        read (None for a queued key the ledger never had)."""
        keys: dict[Key, int | None] = {}
        async with self.pool.acquire() as conn:
            for r in await conn.fetch(
                    "SELECT q.customer_id, q.meter, q.usage_day, d.changed_seq FROM billing.usage_sync_queue q "
                    "LEFT JOIN billing.usage_daily d USING (customer_id, meter, usage_day) "
                    "ORDER BY q.queued_at LIMIT $1", inp.page_size):
                keys[(r["customer_id"], r["meter"], r["usage_day"])] = r["changed_seq"]
            counts.queued_keys += len(keys)
            if inp.write:
                # Changed days Stripe can no longer take: counted, marked, left to the full pass.
                counts.outside_window += int((await conn.execute(
                    "UPDATE billing.usage_daily SET synced_seq = changed_seq "
                    "WHERE changed_seq > synced_seq AND usage_day < $1", oldest)).split()[-1])
            changed = await conn.fetch(
                """
                SELECT customer_id, meter, usage_day, changed_seq FROM billing.usage_daily
                 WHERE changed_seq > synced_seq AND usage_day >= $1
                 ORDER BY changed_seq LIMIT $2
                """, oldest, inp.page_size + 1)
        more = len(changed) > inp.page_size
        for r in changed[:inp.page_size]:
            key = (r["customer_id"], r["meter"], r["usage_day"])
            if key not in keys:
                counts.changed_keys += 1
            keys[key] = r["changed_seq"]
        return keys, more and inp.write  # observe-only marks nothing synced: one page is all

    # ------------------------------------------------------------------ one key from the outbox

    async def _sync_key(self, inp: TickPageInput, key: Key, seen: int | None, stripe_customer_id: str | None,
                        item: ItemPeriod | None, counts: TickCounts) -> None:
        customer_id, meter, day = key
        async with self.pool.acquire() as conn, _key_locked(conn, customer_id, meter, day):
            row = await conn.fetchrow(
                "SELECT quantity, invalid FROM billing.usage_daily WHERE customer_id = $1 AND meter = $2 "
                "AND usage_day = $3", customer_id, meter, day)
            ledger = Decimal(row["quantity"]) if row else Decimal(0)
            if row and row["invalid"]:
                counts.poison_keys += 1  # reported by the full pass with the rows; never priced
            elif stripe_customer_id is None:
                counts.unmapped_keys += 1
            else:
                pushes = await store.key_pushes(conn, customer_id, meter, day)
                pushed = sum((p.value for p in pushes if p.status in LIVE_STATUSES), Decimal(0))
                delta = ledger - pushed
                # Under a subscription, inside the period Stripe still bills (its invoice grace
                # included); a closed period is the full pass's invoice adjustment.
                window = push_window(day, _now(), item, self._grace) if item else None
                timestamp = push_timestamp(day, _now(), window)
                if abs(delta) > _tolerance(ledger) and inp.write:
                    kind = PushKind.DELTA if delta > 0 else PushKind.COMPENSATION
                    ident = correction_identifier(customer_id, meter, day, kind, pushed, pushed, ledger, len(pushes))
                    planned = PlannedPush(ident, delta, kind, timestamp) if timestamp else None
                    if planned is None or await periods_store.final_in_stripe(self.stripe, item, planned):
                        counts.outside_window += 1
                    else:
                        await self.writer.push(conn, inp, key, stripe_customer_id, planned, counts)
            if inp.write:
                await conn.execute(
                    "DELETE FROM billing.usage_sync_queue WHERE customer_id = $1 AND meter = $2 AND usage_day = $3",
                    customer_id, meter, day)
                if seen is not None:
                    await conn.execute(
                        "UPDATE billing.usage_daily SET synced_seq = greatest(synced_seq, $4) "
                        "WHERE customer_id = $1 AND meter = $2 AND usage_day = $3", customer_id, meter, day, seen)

    # ------------------------------------------------------------------ settled pushes

    async def _verify_settled(self, inp: TickPageInput, now: datetime, oldest: date, counts: TickCounts) -> None:
        """One summary read per (customer, meter) with pushes done settling: the keys of the
        oldest pushes first, at most a page of them per tick. Stripe's summaries allow 25 reads/s,
        so at 1% of 100k customers per tick the tick cannot read every push back within its
        minute; what it leaves, later ticks take (oldest first), and the rolling read-back
        confirms every push it finds reflected within its cycle anyway."""
        rows = await self.pool.fetch(
            """
            SELECT customer_id, meter, usage_day, stripe_customer_id FROM (
                SELECT p.customer_id, p.meter, p.usage_day, p.stripe_customer_id, min(p.sent_at) AS first_sent
                  FROM billing.stripe_usage_pushes p
                 WHERE p.status = 'sent' AND p.sent_at <= $1 AND p.usage_day >= $2
                 GROUP BY 1, 2, 3, 4
                 ORDER BY first_sent LIMIT $3) settled
             ORDER BY 1, 2, 3
            """, now - timedelta(seconds=inp.settle_seconds), oldest, inp.page_size)
        if not rows:
            return
        meters = await self._meter_ids({r["meter"] for r in rows}, counts)
        items = await self._items([(r["customer_id"], r["meter"], r["usage_day"]) for r in rows], counts)
        groups: dict[tuple[str, str, str], list[date]] = defaultdict(list)
        for r in rows:
            groups[(r["customer_id"], r["meter"], r["stripe_customer_id"])].append(r["usage_day"])
        for (customer_id, meter, stripe_customer_id), days in groups.items():
            if meter not in meters:
                counts.needs_full_pass += len(days)
                continue
            summaries = await self.stripe.daily_summaries(meters[meter], stripe_customer_id, min(days), max(days))
            counts.stripe_reads += 1
            activity.heartbeat()
            for day in days:
                counts.settled_keys += 1
                await self._settle_key(inp, (customer_id, meter, day), summaries.get(day, Decimal(0)), now,
                                       items.get((customer_id, meter)), counts)

    async def _settle_key(self, inp: TickPageInput, key: Key, stripe_value: Decimal, now: datetime,
                          item: ItemPeriod | None, counts: TickCounts) -> None:
        customer_id, meter, day = key
        async with self.pool.acquire() as conn, _key_locked(conn, customer_id, meter, day):
            ledger = await conn.fetchval(
                "SELECT quantity FROM billing.usage_daily WHERE customer_id = $1 AND meter = $2 AND usage_day = $3",
                customer_id, meter, day) or Decimal(0)
            pushes = await store.key_pushes(conn, customer_id, meter, day)
            finding = classify_stripe_key(
                customer_id=customer_id, meter=meter, day=day, ledger=Decimal(ledger), stripe=stripe_value,
                pushes=pushes, now=now, settle=timedelta(seconds=inp.settle_seconds),
                epsilon=self.settings.recon_epsilon, auto_approve_over_reporting=False,
                window=push_window(day, now, item, self._grace) if item else None)
            if finding.kind == FindingKind.OK:
                counts.confirmed += len(finding.confirm)
                if inp.write:
                    await conn.execute(
                        "UPDATE billing.stripe_usage_pushes SET status = 'confirmed', settled_at = now() "
                        "WHERE identifier = ANY($1) AND status = 'sent'", finding.confirm)
            elif finding.kind == FindingKind.LOST_PUSH:
                counts.lost += len(finding.mark_failed)
                if inp.write:
                    async with conn.transaction():
                        await conn.execute(
                            "UPDATE billing.stripe_usage_pushes SET status = $2, error = 'not reflected in "
                            "Stripe after the settle window (usage tick)' WHERE identifier = ANY($1) "
                            "AND status = ANY($3::text[])",
                            finding.mark_failed, PushStatus.FAILED, [PushStatus.SENT, PushStatus.CONFIRMED])
                        await conn.execute(
                            "INSERT INTO billing.usage_sync_queue (customer_id, meter, usage_day, reason, source) "
                            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                            customer_id, meter, day, LOST_REASON, inp.run_id)
            elif finding.kind not in (FindingKind.PENDING, FindingKind.UNDER_REPORTED):
                counts.needs_full_pass += 1  # Stripe holds more than we sent: the read-back's

    # ------------------------------------------------------------------ counters

    async def _repair_counters(self, inp: TickPageInput, keys: dict[Key, int | None],
                               items: dict[tuple[str, str], ItemPeriod], counts: TickCounts) -> None:
        """Counters of the changed keys' periods (the subscription item's, else calendar
        months) = the rollup's sum over the period."""
        periods = {(c, m, period_of(day, items.get((c, m)))) for c, m, day in keys}
        async with self.pool.acquire() as conn:
            for customer_id, meter, (start, end) in sorted(periods):
                async with conn.transaction():
                    ledger = await conn.fetchrow(
                        "SELECT coalesce(sum(quantity), 0) AS total, coalesce(sum(invalid), 0) AS invalid "
                        "FROM billing.usage_daily WHERE customer_id = $1 AND meter = $2 "
                        "AND usage_day >= $3 AND usage_day < $4", customer_id, meter, start, end)
                    if ledger["invalid"]:
                        continue
                    counter = await conn.fetchval(
                        "SELECT value FROM billing.usage_counters WHERE customer_id = $1 AND meter = $2 "
                        "AND period_start = $3 FOR UPDATE", customer_id, meter, start)
                    total = Decimal(ledger["total"])
                    if counter == total or (counter is None and total == 0):
                        continue
                    await conn.execute(
                        """
                        INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
                        VALUES ($1, $2, $3, $4, $5)
                        ON CONFLICT (customer_id, meter, period_start) DO UPDATE SET value = $5, updated_at = now()
                        """, customer_id, meter, start, end, total)
                    entity = f"{customer_id}|{meter}|{start}"
                    await write_audit(conn, AuditInput(
                        actor=inp.actor, action=AuditAction.USAGE_SET_COUNTER, entity_type="usage_counter",
                        entity_id=entity, reason="usage_tick", customer_id=customer_id,
                        after={"before": None if counter is None else str(counter), "after": str(total)},
                        workflow_id=inp.run_id, run_id=inp.workflow_run_id,
                        idempotency_key=f"counter|{inp.run_id}|{inp.page}|{entity}"))
                    counts.counters_repaired += 1
