"""The baseline: usage reconciliation as a plain asyncio script, no Temporal.

    .venv/bin/python -m bench.reconcile.baseline --dsn postgresql://... --stripe-base http://127.0.0.1:12111 \\
        --start 2026-11-15 --end 2026-11-21 --meters api_requests,storage_gb_hours

What a competent engineer would write as a one-off script doing the same job as an `apply` run
of ReconcileUsage, with the same rules and the same writes, minus the orchestration:

  per page of customers (keyset, `--page-size`):
    the same SQL aggregation   ledger per (customer, meter, day) over the periods (window
                               days and period totals derived from it), counters, our outbox
                               pushes (one repeatable-read snapshot)
    the same Stripe reads      one event-summary call per (customer, meter) through the
                               project's StripeGateway (official SDK, one limiter), at most
                               `--concurrency` in flight
    the same rules             billing.policy (pure functions)
    the same writes            counters compare-and-set + audit; outbox row `planned` + audit
                               in one transaction before the send, then `sent`; a report row
                               per finding
  then the same settle sleep and a verify pass re-reading the customers it corrected.

What it leaves out is what Temporal and the activity design add: durable progress (a crash
starts over), heartbeats, per-key advisory locks and the outbox re-check, pause, approvals,
continue-as-new. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from billing import db
from billing.periods import billing_period, days_in, periods_overlapping, push_timestamp
from billing.policy import (
    FindingKind,
    PlannedPush,
    Push,
    classify_counter,
    classify_stripe_key,
    fallback_compensation_identifier,
    to_stripe_value,
)
from billing.settings import Settings
from billing.stripe_gateway import (
    CancelOutcome,
    PushOutcome,
    StripeGateway,
    make_limiter,
    make_stripe_client,
)
from common.audit import AuditAction, AuditInput, write_audit
from reconcile import store

ACTOR = "baseline-script"


class Baseline:
    def __init__(self, pool: asyncpg.Pool, gateway: StripeGateway, args: argparse.Namespace) -> None:
        self.pool = pool
        self.gw = gateway
        self.a = args
        self.sem = asyncio.Semaphore(args.concurrency)
        self.run_id = f"baseline-{uuid.uuid4().hex[:8]}"
        self.counts: dict[str, int] = defaultdict(int)
        self.touched: list[tuple[str, str]] = []  # (customer_id, stripe_customer_id) corrected

    async def run(self) -> dict[str, Any]:
        a = self.a
        meters = {m.event_name: m.id for m in await self.gw.list_meters() if m.status == "active"}
        self.meters = [(name, meters[name]) for name in a.meters]
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO billing.reconciliation_runs (run_id, mode, window_start, window_end, meters_filter) "
                "VALUES ($1, 'apply', $2, $3, $4)", self.run_id, a.start, a.end, a.meters)
        after: str | None = None
        while True:
            async with self.pool.acquire() as conn:
                page = await conn.fetch(
                    "SELECT customer_id, stripe_customer_id FROM billing.customers "
                    "WHERE $1::text IS NULL OR customer_id > $1 ORDER BY customer_id LIMIT $2",
                    after, a.page_size)
            if not page:
                break
            await self.page([(r["customer_id"], r["stripe_customer_id"]) for r in page], verify=False)
            after = page[-1]["customer_id"]
        await asyncio.sleep(a.settle)
        for i in range(0, len(self.touched), a.page_size):
            await self.page(self.touched[i : i + a.page_size], verify=True)
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE billing.reconciliation_runs SET status = 'completed', counts = $2::jsonb, "
                "finished_at = now() WHERE run_id = $1", self.run_id, json.dumps(self.counts))
        return dict(self.counts)

    async def page(self, customers: list[tuple[str, str]], verify: bool) -> None:
        a = self.a
        ids = [c for c, _ in customers]
        names = [m for m, _ in self.meters]
        periods = periods_overlapping(a.start, a.end)
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            day_rows = await store.ledger_days(conn, ids, periods, names)
            counter_rows = await store.counters(conn, ids, a.start, a.end, names)
            push_rows = await store.pushes(conn, ids, a.start, a.end)
        ledger: dict[tuple[str, str, date], Decimal] = {}
        period_totals: dict[tuple[str, str, date], Decimal] = defaultdict(Decimal)
        for r in day_rows:
            total = Decimal(r["total"])
            period_totals[(r["customer_id"], r["meter"], r["day"].replace(day=1))] += total
            if a.start <= r["day"] <= a.end:
                ledger[(r["customer_id"], r["meter"], r["day"])] = total
        pushes: dict[tuple[str, str, date], list[Push]] = defaultdict(list)
        for r in push_rows:
            pushes[(r["customer_id"], r["meter"], r["usage_day"])].append(Push(
                r["identifier"], Decimal(r["value"]), r["status"], r["kind"], r["planned_at"],
                r["sent_at"], r["cancelled_at"]))

        summaries: dict[tuple[str, str], dict[date, Decimal]] = {}

        async def read(c: str, sc: str, m: str, mid: str) -> None:
            async with self.sem:
                summaries[(c, m)] = await self.gw.daily_summaries(mid, sc, a.start, a.end)

        async with asyncio.TaskGroup() as tg:
            for c, sc in customers:
                for m, mid in self.meters:
                    tg.create_task(read(c, sc, m, mid))

        now = datetime.now(UTC)
        settle = timedelta(seconds=a.settle)
        prefix = "verify|" if verify else ""
        report: list[tuple[Any, ...]] = []
        stripe_fixes: list[tuple[str, str, str, date, Any]] = []
        confirmed: list[str] = []
        self.counts["customers_scanned" if not verify else "verify_customers"] += len(customers)
        for c, sc in customers:
            for m, _ in self.meters:
                for day in days_in(a.start, a.end):
                    k = (c, m, day)
                    L = ledger.get(k, Decimal(0))
                    S = summaries[(c, m)].get(day, Decimal(0))
                    if L == 0 and S == 0 and k not in pushes:
                        continue
                    self.counts["keys_checked" if not verify else "verify_keys_checked"] += 1
                    f = classify_stripe_key(
                        customer_id=c, meter=m, day=day, ledger=L, stripe=S, pushes=pushes.get(k, []),
                        now=now, settle=settle, epsilon=Decimal(str(a.epsilon)), auto_approve_over_reporting=True)
                    if f.kind == FindingKind.OK:
                        confirmed += f.confirm
                        continue
                    self.counts["drift_count" if not verify else "verify_drift"] += 1
                    if verify:
                        report.append((self.run_id, f"{prefix}stripe|{c}|{m}|{day}", str(f.kind), c, sc, m, day,
                                       L, S, "observed"))
                        continue
                    if f.kind in (FindingKind.PENDING, FindingKind.NEEDS_INVOICE_ADJUSTMENT):
                        report.append((self.run_id, f"stripe|{c}|{m}|{day}", str(f.kind), c, sc, m, day, L, S, "observed"))
                        continue
                    stripe_fixes.append((c, sc, m, day, f))
                    report.append((self.run_id, f"stripe|{c}|{m}|{day}", str(f.kind), c, sc, m, day, L, S, "applied"))

        counter_fixes = []
        if not verify:
            pl = period_totals
            ctr = {(r["customer_id"], r["meter"], r["period_start"]): r for r in counter_rows}
            for key in sorted(set(pl) | set(ctr)):
                row = ctr.get(key)
                cf = classify_counter(pl.get(key, Decimal(0)), Decimal(row["value"]) if row else None,
                                      row["quota"] if row else None, key in pl)
                if cf.needs_repair:
                    self.counts["drift_count"] += 1
                    counter_fixes.append((key, cf, row))

        async with self.pool.acquire() as conn:
            if confirmed:
                await conn.execute(
                    "UPDATE billing.stripe_usage_pushes SET status = 'confirmed', settled_at = now() "
                    "WHERE identifier = ANY($1) AND status = 'sent'", confirmed)
            if report:
                await conn.executemany(
                    """
                    INSERT INTO billing.discrepancies (run_id, discrepancy_key, kind, customer_id,
                        stripe_customer_id, meter, usage_day, ledger_value, stripe_value, status)
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT DO NOTHING
                    """, report)
            if counter_fixes:
                await self.fix_counters(conn, counter_fixes)
        if stripe_fixes:
            await self.fix_stripe(stripe_fixes)
        corrected = {c for c, *_ in stripe_fixes} | {key[0] for key, *_ in counter_fixes}
        self.touched += [(c, sc) for c, sc in customers if c in corrected]

    async def fix_counters(self, conn: asyncpg.Connection, fixes: list[Any]) -> None:
        async with conn.transaction():
            for (c, m, pstart), cf, row in fixes:
                value = cf.ledger
                if row is None:
                    res = await conn.execute(
                        "INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value) "
                        "VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING", c, m, pstart, billing_period(pstart)[1], value)
                else:
                    res = await conn.execute(
                        "UPDATE billing.usage_counters SET value = $5, updated_at = now() WHERE customer_id = $1 "
                        "AND meter = $2 AND period_start = $3 AND value = $4", c, m, pstart, row["value"], value)
                if res.endswith(" 0"):
                    continue
                self.counts["counter_repairs"] += 1
                await self.audit(conn, AuditAction.USAGE_SET_COUNTER, "usage_counter", f"{c}|{m}|{pstart}",
                                 {"before": str(row["value"]) if row else None, "after": str(value)})

    async def audit(self, conn: asyncpg.Connection, action: AuditAction, entity_type: str, entity_id: str,
                    after: dict[str, Any]) -> None:
        await write_audit(conn, AuditInput(
            actor=ACTOR, action=action, entity_type=entity_type, entity_id=entity_id, after=after,
            workflow_id=self.run_id, idempotency_key=f"{action}|{entity_id}"))

    async def fix_stripe(self, fixes: list[tuple[str, str, str, date, Any]]) -> None:
        # Outbox rows and their audit rows first (one transaction), then the sends.
        planned: list[tuple[str, str, str, date, Any]] = []  # (c, sc, m, day, PlannedPush)
        cancels: list[tuple[str, str, str, date, Any, str]] = []
        for c, sc, m, day, f in fixes:
            if f.push is not None:
                planned.append((c, sc, m, day, f.push))
            cancels += [(c, sc, m, day, f, ident) for ident in f.cancel]

        async def cancel(c: str, sc: str, m: str, day: date, f: Any, ident: str) -> None:
            async with self.sem:
                outcome, _ = await self.gw.cancel_meter_event(identifier=ident, event_name=m)
            self.counts["stripe_writes"] += 1
            if outcome == CancelOutcome.CANCELLED:
                self.counts["corrections_cancelled"] += 1
                async with self.pool.acquire() as conn:
                    await conn.execute("UPDATE billing.stripe_usage_pushes SET status = 'cancelled', "
                                       "cancelled_at = now() WHERE identifier = $1", ident)
            elif outcome == CancelOutcome.TOO_OLD:
                async with self.pool.acquire() as conn:
                    value = await conn.fetchval("SELECT value FROM billing.stripe_usage_pushes WHERE identifier = $1", ident)
                ts = push_timestamp(day, datetime.now(UTC))
                assert ts is not None
                planned.append((c, sc, m, day, PlannedPush(fallback_compensation_identifier(ident), -value,
                                                           "compensation", ts, replaces=ident)))

        async with asyncio.TaskGroup() as tg:
            for cx in cancels:
                tg.create_task(cancel(*cx))
        if not planned:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                """
                INSERT INTO billing.stripe_usage_pushes (identifier, customer_id, stripe_customer_id, meter,
                    usage_day, value, event_timestamp, kind, status, replaces, run_id)
                VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'planned',$9,$10) ON CONFLICT (identifier) DO NOTHING
                """, [(p.identifier, c, sc, m, day, p.value, p.event_timestamp, p.kind, p.replaces, self.run_id)
                      for c, sc, m, day, p in planned])
            for c, _, m, day, p in planned:
                await self.audit(conn, AuditAction.USAGE_PUSH_METER_EVENT, "meter_event", p.identifier,
                                 {"customer_id": c, "meter": m, "day": day.isoformat(), "value": str(p.value),
                                  "kind": p.kind})
        sent: list[tuple[str, datetime]] = []

        async def push(c: str, sc: str, m: str, day: date, p: Any) -> None:
            async with self.sem:
                outcome, _ = await self.gw.push_meter_event(
                    identifier=p.identifier, event_name=m, stripe_customer_id=sc,
                    value=to_stripe_value(p.value), timestamp=p.event_timestamp)
            self.counts["stripe_writes"] += 1
            if outcome in (PushOutcome.SENT, PushOutcome.ALREADY_SENT):
                self.counts["corrections_pushed"] += 1
                sent.append((p.identifier, datetime.now(UTC)))
            else:
                self.counts["reconcile_failures"] += 1

        async with asyncio.TaskGroup() as tg:
            for c, sc, m, day, p in planned:
                tg.create_task(push(c, sc, m, day, p))
        async with self.pool.acquire() as conn:
            await conn.executemany(
                "UPDATE billing.stripe_usage_pushes SET status = 'sent', sent_at = $2 "
                "WHERE identifier = $1 AND status = 'planned'", sent)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(STRIPE_API_BASE=args.stripe_base, STRIPE_API_KEY=args.api_key)
    pool = await db.create_pool(args.dsn, min_size=1, max_size=10)
    gateway = StripeGateway(make_stripe_client(settings), make_limiter(args.rate_limit))
    try:
        t0 = time.perf_counter()
        counts = await Baseline(pool, gateway, args).run()
        wall = time.perf_counter() - t0
    finally:
        await pool.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_seconds": round(wall, 3), "counts": counts, "peak_rss_mib": round(_peak_rss_mib(), 1),
            "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 2),
            "rate_limit_retries": gateway.rate_limit_retries}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", required=True)
    p.add_argument("--stripe-base", required=True)
    p.add_argument("--api-key", default="sk_test_bench")
    p.add_argument("--start", type=date.fromisoformat, required=True)
    p.add_argument("--end", type=date.fromisoformat, required=True)
    p.add_argument("--meters", type=lambda s: s.split(","), required=True)
    p.add_argument("--page-size", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8, help="Stripe calls in flight")
    p.add_argument("--rate-limit", type=float, default=0, help="client-side Stripe ops/s, 0 = none")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between the corrections and the verify pass")
    p.add_argument("--epsilon", type=float, default=0.005)
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args())), default=str))
    sys.stdout.flush()
