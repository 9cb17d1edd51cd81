"""Shared helpers of the ReconcileUsage integration tests: seeding (customers, meters, usage,
counters), drift injection, running a workflow on a test worker, and reading the three truths
(ledger, counters, Stripe's daily summaries) per key."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import stripe
from temporalio.client import Client, WorkflowHandle

from billing.ingest import UsageEvent, ingest
from billing.periods import billing_period, days_in
from billing.settings import Settings
from reconcile.tick_types import UsageTickInput, UsageTickResult
from reconcile.tick_workflow import UsageTick
from reconcile.types import (
    ApprovalDecision,
    Phase,
    ReconcileProgress,
    ReconcileResult,
    ReconcileUsageInput,
)
from worker import build_worker

METERS = {"api_requests": "API requests", "storage_gb_hours": "Storage (GB-hours)"}
DAYS = 3  # today and the 2 days before
MEANINGFUL_STRIPE_POSTS = ("POST /v1/billing/meter_events", "POST /v1/billing/meter_event_adjustments")


def make_settings(postgres_dsn: str, emulator: str, **extra: Any) -> Settings:
    values = {
        "DATABASE_URL": postgres_dsn,
        "STRIPE_API_BASE": emulator,
        "STRIPE_RATE_LIMIT": 0,
        "STRIPE_BUDGET": "process",  # unlimited: tests of the shared budget ask for it
        "RECON_SETTLE_SECONDS": 1,
        "STRIPE_MAX_NETWORK_RETRIES": 2,
    }
    values.update(extra)
    return Settings.model_validate(values)


@asynccontextmanager
async def running_worker(client: Client, settings: Settings, task_queue: str) -> AsyncIterator[None]:
    worker, close = await build_worker(client, settings, task_queue=task_queue)
    try:
        async with worker:
            yield
    finally:
        await close()


@dataclass
class World:
    tag: str
    customers: list[tuple[str, str]]  # (customer_id, stripe_customer_id)
    meters: dict[str, str]  # event_name -> stripe meter id
    start: date
    end: date
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def customer_ids(self) -> list[str]:
        return [c for c, _ in self.customers]

    @property
    def days(self) -> list[date]:
        return days_in(self.start, self.end)

    def stripe_id(self, customer_id: str) -> str:
        return dict(self.customers)[customer_id]

    def request(self, **kw: Any) -> ReconcileUsageInput:
        base: dict[str, Any] = dict(start_date=self.start, end_date=self.end,
                                    customers=self.customer_ids, settle_seconds=1, actor="pytest")
        base.update(kw)
        return ReconcileUsageInput(**base)


def utc_today() -> date:
    return datetime.now(UTC).date()


async def create_meters(sc: stripe.StripeClient, names: dict[str, str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, display in (names or METERS).items():
        m = await sc.v1.billing.meters.create_async(params={
            "display_name": display, "event_name": name, "default_aggregation": {"formula": "sum"}})
        out[name] = m.id
    return out


async def seed_world(
    pool: asyncpg.Pool, sc: stripe.StripeClient, *, n_customers: int, events_per_key: int = 2,
    days: int = DAYS, seed: int = 7, meters: dict[str, str] | None = None,
    with_counters: bool = True,
) -> World:
    """Customers in Stripe and in billing.customers, sum meters, usage on every
    (customer, meter, day) and correct enforcement counters."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    meter_ids = await create_meters(sc, meters)
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[str, str]:
        cid = f"cus-{tag}-{i:04d}"
        async with sem:
            cus = await sc.v1.customers.create_async(params={"name": f"Test {i}", "metadata": {"customer_id": cid}})
        return cid, cus.id

    customers = list(await asyncio.gather(*(one(i) for i in range(n_customers))))
    today = utc_today()
    start = today - timedelta(days=days - 1)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO billing.customers (customer_id, stripe_customer_id, name) VALUES ($1, $2, $3)",
            [(cid, sid, cid) for cid, sid in customers])
        now = datetime.now(UTC)
        events: list[UsageEvent] = []
        n = 0
        for cid, _ in customers:
            for meter in meter_ids:
                for day in days_in(start, today):
                    for _ in range(events_per_key):
                        at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(
                            seconds=rng.randrange(86400))
                        at = min(at, now - timedelta(seconds=5))
                        qty = (Decimal(rng.randint(1, 50)) if meter == "api_requests"
                               else Decimal(rng.randint(1, 40)) / 4)
                        events.append(UsageEvent(request_id=f"req-{tag}-{n}", customer_id=cid, meter=meter,
                                                 quantity=qty, occurred_at=at))
                        n += 1
        # The app retried a few submissions: absorbed by request_id.
        events += events[:3]
        await ingest(conn, events, source="test")
        if with_counters:
            await conn.execute(
                """
                INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
                SELECT customer_id, meter, p, (p + interval '1 month')::date, sum(quantity)
                  FROM (SELECT customer_id, meter, quantity,
                               date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p
                          FROM billing.usage_events WHERE customer_id = ANY($1)) u
                 GROUP BY 1, 2, 3
                """, [c for c, _ in customers])
    return World(tag=tag, customers=customers, meters=meter_ids, start=start, end=today)


# ---------------------------------------------------------------- running workflows


async def start(client: Client, task_queue: str, request: ReconcileUsageInput, workflow_id: str) -> WorkflowHandle:
    return await client.start_workflow(
        "ReconcileUsage", request, id=workflow_id, task_queue=task_queue, result_type=ReconcileResult)


async def progress(handle: WorkflowHandle) -> ReconcileProgress | None:
    return await handle.query("progress", result_type=ReconcileProgress)


async def wait_phase(handle: WorkflowHandle, phase: Phase, limit: float = 30.0) -> ReconcileProgress:
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        p = await progress(handle)
        if p is not None and p.phase == phase:
            return p
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run did not reach phase {phase} within {limit}s (last: {p})")
        await asyncio.sleep(0.2)


async def run(client: Client, task_queue: str, request: ReconcileUsageInput, workflow_id: str,
              approver: str | None = None, limit: float = 60.0) -> ReconcileResult:
    """Run to completion; if `approver` is given, approve the run when it waits for approval."""
    handle = await start(client, task_queue, request, workflow_id)
    result = asyncio.ensure_future(handle.result())
    approved = False
    deadline = asyncio.get_running_loop().time() + limit
    try:
        while not result.done():
            await asyncio.wait({result}, timeout=0.3)
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {workflow_id} did not finish within {limit}s")
            if approver and not approved and not result.done():
                p = await progress(handle)
                if p is not None and p.phase == Phase.AWAITING_APPROVAL:
                    await handle.execute_update("approve", ApprovalDecision(actor=approver, reason="pytest"))
                    approved = True
        return result.result()
    finally:
        if not result.done():
            result.cancel()


# ---------------------------------------------------------------- the three truths


Key = tuple[str, str, date]


async def ledger_by_key(pool: asyncpg.Pool, world: World) -> dict[Key, Decimal]:
    rows = await pool.fetch(
        """
        SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(quantity) AS total
          FROM billing.usage_events
         WHERE customer_id = ANY($1) AND meter = ANY($2)
         GROUP BY 1, 2, 3
        """, world.customer_ids, list(world.meters))
    out = {k: Decimal(0) for k in all_keys(world)}
    for r in rows:
        k = (r["customer_id"], r["meter"], r["day"])
        if k in out:
            out[k] = Decimal(r["total"])
    return out


def all_keys(world: World) -> list[Key]:
    return [(c, m, d) for c in world.customer_ids for m in world.meters for d in world.days]


async def stripe_by_key(sc: stripe.StripeClient, world: World) -> dict[Key, Decimal]:
    """Stripe's own daily summaries, through the SDK."""
    start_ts = int(datetime.combine(world.start, datetime.min.time(), tzinfo=UTC).timestamp())
    end_ts = int(datetime.combine(world.end + timedelta(days=1), datetime.min.time(), tzinfo=UTC).timestamp())
    out = {k: Decimal(0) for k in all_keys(world)}
    sem = asyncio.Semaphore(8)

    async def one(cid: str, sid: str, meter: str, meter_id: str) -> None:
        async with sem:
            page = await sc.v1.billing.meters.event_summaries.list_async(meter_id, params={
                "customer": sid, "start_time": start_ts, "end_time": end_ts,
                "value_grouping_window": "day", "limit": 100})
        assert not page.has_more
        for s in page.data:
            day = datetime.fromtimestamp(s.start_time, tz=UTC).date()
            out[(cid, meter, day)] += Decimal(str(s.aggregated_value))

    await asyncio.gather(*(one(cid, sid, m, mid) for cid, sid in world.customers
                           for m, mid in world.meters.items()))
    return out


def close(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= Decimal("0.000001")


async def assert_stripe_equals_ledger(pool: asyncpg.Pool, sc: stripe.StripeClient, world: World) -> None:
    ledger = await ledger_by_key(pool, world)
    stripe_values = await stripe_by_key(sc, world)
    bad = {k: (ledger[k], stripe_values[k]) for k in ledger if not close(ledger[k], stripe_values[k])}
    assert not bad, f"Stripe summaries != ledger (ledger, stripe) for {len(bad)} key(s): {list(bad.items())[:5]}"


async def assert_counters_equal_ledger(pool: asyncpg.Pool, world: World) -> None:
    """Every (customer, meter, period) with a counter or usage: counter == ledger of the period
    (a missing counter counts as 0; an orphan counter must have been zeroed)."""
    periods = sorted({billing_period(d) for d in world.days})
    ledger = {(r["customer_id"], r["meter"], r["p"]): Decimal(r["total"]) for r in await pool.fetch(
        """
        SELECT customer_id, meter, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p,
               sum(quantity) AS total
          FROM billing.usage_events WHERE customer_id = ANY($1) GROUP BY 1, 2, 3
        """, world.customer_ids)}
    counters = {(r["customer_id"], r["meter"], r["period_start"]): Decimal(r["value"]) for r in await pool.fetch(
        "SELECT customer_id, meter, period_start, value FROM billing.usage_counters "
        "WHERE customer_id = ANY($1) AND period_start = ANY($2)",
        world.customer_ids, [p[0] for p in periods])}
    keys = {k for k in set(ledger) | set(counters) if k[2] in {p[0] for p in periods}}
    bad = {k: (ledger.get(k, Decimal(0)), counters.get(k)) for k in keys
           if counters.get(k) is None and ledger.get(k, Decimal(0)) != 0
           or counters.get(k) is not None and not close(counters[k], ledger.get(k, Decimal(0)))}
    assert not bad, f"counters != ledger (ledger, counter): {bad}"


# ---------------------------------------------------------------- drift injection


async def inject_all_drift(pool: asyncpg.Pool, sc: stripe.StripeClient, world: World) -> dict[str, Any]:
    """One customer per drift kind (needs >= 6 customers and a synced outbox). Returns what was
    injected, for the assertions."""
    c = world.customer_ids
    notes: dict[str, Any] = {}
    today = world.end
    period_start, period_end = billing_period(today)
    async with pool.acquire() as conn:
        # 1. lost push: one of our events is cancelled in Stripe behind our back.
        lost = await conn.fetchrow(
            "SELECT identifier, customer_id, meter, usage_day, value FROM billing.stripe_usage_pushes "
            "WHERE customer_id = $1 AND status IN ('sent', 'confirmed') ORDER BY usage_day, meter LIMIT 1", c[0])
        assert lost is not None, "the initial sync pushed nothing"
        await sc.v1.billing.meter_event_adjustments.create_async(params={
            "event_name": lost["meter"], "type": "cancel", "cancel": {"identifier": lost["identifier"]}})
        notes["lost"] = dict(lost)
        # 2. double push from outside: another system sent the same usage again.
        dup = await conn.fetchrow(
            "SELECT meter, usage_day, value, event_timestamp FROM billing.stripe_usage_pushes "
            "WHERE customer_id = $1 ORDER BY usage_day, meter LIMIT 1", c[1])
        foreign = f"legacy-cron-{world.tag}-dup"
        await sc.v1.billing.meter_events.create_async(params={
            "event_name": dup["meter"], "identifier": foreign,
            "timestamp": int(dup["event_timestamp"].timestamp()),
            "payload": {"stripe_customer_id": world.stripe_id(c[1]), "value": str(dup["value"])}})
        notes["double"] = {**dict(dup), "customer_id": c[1], "identifier": foreign}
        # 3. unpushed usage: ingested after the sync.
        late_at = datetime.now(UTC) - timedelta(seconds=30)
        if late_at.date() != today:
            late_at = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=1)
        await ingest(conn, [UsageEvent(request_id=f"req-{world.tag}-late", customer_id=c[2],
                                       meter="api_requests", quantity=Decimal(42), occurred_at=late_at)])
        notes["late"] = {"customer_id": c[2], "meter": "api_requests", "day": late_at.date()}
        # 4. corrupted counter.
        await conn.execute(
            "UPDATE billing.usage_counters SET value = value + 137 WHERE customer_id = $1 "
            "AND meter = 'api_requests' AND period_start = $2", c[3], period_start)
        notes["corrupted"] = {"customer_id": c[3], "meter": "api_requests", "period_start": period_start}
        # 5. orphan counter: a counter with no usage behind it (a meter not in Stripe).
        await conn.execute(
            "INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value) "
            "VALUES ($1, 'gpu_minutes', $2, $3, 55)", c[4], period_start, period_end)
        notes["orphan"] = {"customer_id": c[4], "meter": "gpu_minutes", "period_start": period_start}
        # 6. quota crossing: the counter under-counts below the quota; the ledger is over it.
        ledger = await conn.fetchval(
            "SELECT sum(quantity) FROM billing.usage_events WHERE customer_id = $1 AND meter = 'api_requests' "
            "AND occurred_at >= $2", c[5], datetime.combine(period_start, datetime.min.time(), tzinfo=UTC))
        await conn.execute(
            "UPDATE billing.usage_counters SET value = $2, quota = $3 WHERE customer_id = $1 "
            "AND meter = 'api_requests' AND period_start = $4", c[5], ledger / 2, ledger - 1, period_start)
        notes["quota"] = {"customer_id": c[5], "meter": "api_requests", "period_start": period_start}
    return notes


# ---------------------------------------------------------------- snapshots


# A run's own report rows, and what any run or request leaves behind that is not a write to the
# billing state: what operators are told (notifications) and each worker's tally of Stripe
# answers (the circuit breaker's input).
OBSERVATION_TABLES = ("notifications", "stripe_call_tally")
SNAPSHOT_EXCLUDED = ("reconciliation_runs", "discrepancies", *OBSERVATION_TABLES)


async def snapshot_billing(pool: asyncpg.Pool) -> dict[str, list[tuple]]:
    """Every row of every billing table except a run's own report rows."""
    tables = [r["tablename"] for r in await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'billing' ORDER BY tablename")]
    out: dict[str, list[tuple]] = {}
    for t in tables:
        if t in SNAPSHOT_EXCLUDED:
            continue
        rows = await pool.fetch(f'SELECT * FROM billing."{t}"')
        out[t] = sorted((tuple(r.values()) for r in rows), key=repr)
    return out


def stripe_writes(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k in MEANINGFUL_STRIPE_POSTS and v}


async def stable_meter_event_count(emulator_admin, quiet: float, limit: float) -> int:
    """The number of accepted meter events once it has not moved for `quiet` seconds."""
    deadline = time.monotonic() + limit
    last, since = len(await emulator_admin.meter_events()), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "meter events kept arriving after the pause"
        await asyncio.sleep(0.2)
        now = len(await emulator_admin.meter_events())
        if now != last:
            last, since = now, time.monotonic()
    return last


# ---------------------------------------------------------------- rows from before the contract


async def insert_legacy_usage(pool: asyncpg.Pool, rows: list[tuple[str, str, str, str, datetime]]) -> None:
    """(request_id, customer_id, meter, quantity as SQL text, occurred_at) rows the ingestion
    contract refuses (NaN, Infinity, 1e100000): stored as a database from before migration 0009
    holds them. The constraints are dropped and re-added NOT VALID around the insert, the way
    the migration left them."""
    async with pool.acquire() as conn, conn.transaction():
        defs = await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = 'billing.usage_events'::regclass AND contype = 'c'")
        for d in defs:
            await conn.execute(f'ALTER TABLE billing.usage_events DROP CONSTRAINT "{d["conname"]}"')
        await conn.executemany(
            "INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at) "
            "VALUES ($1, $2, $3, $4::numeric, $5)", rows)
        for d in defs:
            definition = d["def"].removesuffix(" NOT VALID")
            await conn.execute(
                f'ALTER TABLE billing.usage_events ADD CONSTRAINT "{d["conname"]}" {definition} NOT VALID')


LONG_SETTLE = 3600  # a tick's settle window that keeps it from reading anything back


async def run_tick(client: Client, task_queue: str, **kw: Any) -> UsageTickResult:
    """One UsageTick to completion (settle window an hour unless given: no read-back)."""
    inp = UsageTickInput(actor="pytest", **{"settle_seconds": LONG_SETTLE, **kw})
    return await client.execute_workflow(UsageTick.run, inp, id=f"tick-{uuid.uuid4().hex[:8]}", task_queue=task_queue)
