"""`billing-recon demo`: the main job end to end on embedded defaults.

Brings the local stack up, seeds customers, meters and a few thousand usage events, syncs usage
to the Stripe emulator, injects every kind of drift (lost push, double push, late usage,
corrupted counter, orphan counter, quota crossing), runs a dry-run and then an apply, and prints
a before/after report with the Temporal UI link of each run. Then duration usage: a few
allocations with one of each of its four drifts (missing and orphan usage records, unbilled
closed usage, a payment without its credit), found by a dry-run and fixed by an apply
(ReconcileAllocations). Stops the stack unless --keep.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import typer
from rich.table import Table
from temporalio.client import Client

from allocations import contract
from allocations.types import (
    AllocationsResult,
    AllocationStatus,
    PaymentStatus,
    ReconcileAllocationsInput,
    TimeUnit,
)
from allocations.workflow import ReconcileAllocations
from billing import db
from billing.ingest import UsageEvent, ingest
from billing.settings import get_settings
from billing.stripe_gateway import StripeGateway, make_limiter, make_stripe_client
from common.client import connect
from common.types import Mode
from reconcile.types import (
    ApprovalDecision,
    ReconcileProgress,
    ReconcileResult,
    ReconcileUsageInput,
)
from reconcile.workflow import ReconcileUsage
from starter import queries
from starter.follow import follow, start
from starter.kit import console, counts_table, run
from starter.reconcile_commands import decide, print_report

METERS = {"api_requests": "API requests", "storage_gb_hours": "Storage (GB-hours)"}
DAYS = 6  # today and the 5 days before: all inside one window, none near the 35-day edge
# Duration usage: a GPU class billed per minute, and the drifts ReconcileAllocations fixes.
GPU_CLASS = "gpu.demo"
GPU_RATE_PER_MINUTE = 6  # minor units
GPU_METER = "gpu_minutes"
ALLOCATION_DRIFTS = ("missing_open_usage", "orphan_open_usage", "unbilled_closed_usage", "payment_drift")


def demo(
    customers: int = typer.Option(20, help="How many customers to seed"),
    events: int = typer.Option(3000, help="How many usage events to seed"),
    keep: bool = typer.Option(False, "--keep", help="Leave the stack running afterwards"),
    seed: int = typer.Option(7, help="Random seed of the generated usage"),
) -> None:
    """Run the main job end to end on embedded defaults, with a before/after report.

    Brings the local stack up, seeds customers and usage, injects every kind of drift, runs a
    dry-run and then an apply, and prints before/after with each run's Temporal UI link; then
    the same for duration usage (allocations); stops the stack unless --keep. Exit code 1 if a
    key still disagrees afterwards, a dry-run changed anything, or an allocation drift was not
    found or is not fixed."""
    import devstack as stack

    console.rule("local stack")
    info = stack.up(log=lambda m: console.print(f"[dim]{m}[/dim]"))
    for label, address in info.address_lines():
        console.print(f"{label:<16} {address}")
    ok = False
    try:
        ok = run(_demo(info, customers, events, seed))
    finally:
        if not keep:
            console.rule("stopping the stack (use --keep to leave it running)")
            stack.down()
    if not ok:
        raise typer.Exit(1)


async def _demo(info, n_customers: int, n_events: int, seed: int) -> bool:
    settings = get_settings().model_copy(update={
        "database_url": info.database_url, "stripe_api_base": info.stripe_api_base})
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    ui = info.temporal_ui_url.rstrip("/")
    client = await connect(info.temporal_address)
    gateway = StripeGateway(make_stripe_client(settings), make_limiter(10))
    stripe = make_stripe_client(settings)
    conn = await db.connect(info.database_url)
    today = datetime.now(UTC).date()
    start = today - timedelta(days=DAYS - 1)
    try:
        console.rule("seed")
        meter_ids = await _ensure_meters(stripe)
        customer_ids: list[tuple[str, str]] = []
        for i in range(n_customers):
            cid = f"demo-{tag}-{i:03d}"
            cus = await stripe.v1.customers.create_async(params={"name": f"Demo customer {i}", "metadata": {"customer_id": cid}})
            customer_ids.append((cid, cus.id))
        await conn.executemany(
            "INSERT INTO billing.customers (customer_id, stripe_customer_id, name) VALUES ($1, $2, $3)",
            [(cid, sid, f"Demo customer {i}") for i, (cid, sid) in enumerate(customer_ids)])
        usage = [_event(rng, customer_ids, start, tag, i) for i in range(n_events)]
        usage += usage[: n_events // 50]  # the app retried some submissions: deduped by request_id
        rep = await ingest(conn, usage, source="demo")
        # Enforcement counters as the app keeps them (correct to begin with).
        await conn.execute(
            """
            INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
            SELECT customer_id, meter, p, (p + interval '1 month')::date, sum(quantity)
              FROM (SELECT customer_id, meter, quantity,
                           date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p
                      FROM billing.usage_events WHERE customer_id LIKE $1) u
             GROUP BY 1, 2, 3
            """, f"demo-{tag}-%")
        console.print(f"{n_customers} customers, {len(METERS)} meters, {rep.inserted} usage events "
                      f"({rep.duplicates} duplicate submissions absorbed) over {start}..{today}")
        only = [c for c, _ in customer_ids]

        console.rule("initial usage sync (apply)")
        first = await _run(client, settings, ui, ReconcileUsageInput(
            start_date=start, end_date=today, customers=only, mode=Mode.APPLY, settle_seconds=1,
            actor="demo"), f"demo-{tag}-sync")
        console.print(f"pushed {first.counts.corrections_pushed} meter events to Stripe")

        console.rule("inject drift")
        drift = await _inject(conn, stripe, rng, customer_ids, meter_ids, start, today, tag)
        for line in drift:
            console.print(f"  - {line}")

        before = await _snapshot(conn, gateway, customer_ids, meter_ids, start, today)
        console.rule("dry-run")
        dry = await _run(client, settings, ui, ReconcileUsageInput(
            start_date=start, end_date=today, customers=only, mode=Mode.DRY_RUN, actor="demo"),
            f"demo-{tag}-dry-run")
        _counts_table("dry-run found", dry)
        after_dry = await _snapshot(conn, gateway, customer_ids, meter_ids, start, today)
        console.print("dry-run changed nothing: " + ("[green]yes[/green]" if after_dry == before else "[red]NO[/red]"))

        console.rule("apply")
        applied = await _run(client, settings, ui, ReconcileUsageInput(
            start_date=start, end_date=today, customers=only, mode=Mode.APPLY, settle_seconds=2,
            actor="demo"), f"demo-{tag}-apply", approver="demo-operator")
        _counts_table("apply", applied)

        after = await _snapshot(conn, gateway, customer_ids, meter_ids, start, today)
        console.rule("before / after")
        _before_after(before, after)
        mismatches = [k for k, v in after.items() if v[0] != v[1] or v[0] != v[2]]
        if mismatches:
            console.print(f"[red]{len(mismatches)} key(s) still disagree[/red]: {mismatches[:5]}")
        else:
            console.print("[green]every key agrees: counters = ledger = Stripe summaries[/green]")
        console.rule(f"report of {applied.run_id}")
        report = await queries.report(conn, applied.run_id)
        if report is not None:
            print_report(report, limit=12)
        console.print(f"full report: billing-recon report {applied.run_id} --export-discrepancies drift.csv")
        console.print(f"Temporal UI: {ui}/namespaces/default/workflows/{applied.run_id}")
        allocations_ok = await _allocations(client, settings, ui, conn, tag)
        return not mismatches and after_dry == before and allocations_ok
    finally:
        await conn.close()


async def _allocations(client: Client, settings, ui: str, conn, tag: str) -> bool:
    """Duration usage: one of each of the four drifts, found by a dry-run that writes nothing,
    fixed by an apply, and a last dry-run that finds nothing left to fix."""
    customer = f"demo-{tag}-gpu"
    as_of = datetime.now(UTC).replace(microsecond=0)  # every run reconciles as of the same instant
    console.rule("duration usage: inject drift")
    for line in await _inject_allocation_drift(conn, customer, tag, as_of):
        console.print(f"  - {line}")
    before = await queries.duration_rows(conn, customer)

    async def reconcile(mode: Mode, name: str) -> AllocationsResult:
        workflow_id = f"demo-{tag}-allocations-{name}"
        console.print(f"run {workflow_id}: {ui}/namespaces/default/workflows/{workflow_id}")
        handle = await start(ReconcileAllocations.run, ReconcileAllocationsInput(
            mode=mode, customer=customer, actor="demo", reason="demo", as_of=as_of), workflow_id,
            client=client, task_queue=settings.task_queue)
        return await handle.result()

    console.rule("allocations dry-run")
    dry = await reconcile(Mode.DRY_RUN, "dry-run")
    console.print(counts_table("allocations dry-run found", dry.counts, skip_zero=True))
    missed = [k for k in ALLOCATION_DRIFTS if not getattr(dry.counts, k)]
    unchanged = await queries.duration_rows(conn, customer) == before
    console.print("every drift found: " + ("[green]yes[/green]" if not missed else f"[red]NO[/red] {missed}"))
    console.print("dry-run changed nothing: " + ("[green]yes[/green]" if unchanged else "[red]NO[/red]"))

    console.rule("allocations apply")
    applied = await reconcile(Mode.APPLY, "apply")
    console.print(counts_table("allocations apply", applied.counts, skip_zero=True))
    check = await reconcile(Mode.DRY_RUN, "check")
    fixed = applied.counts.fix_errors == 0 and check.counts.fixable == 0
    console.print("nothing left to fix: " + ("[green]yes[/green]" if fixed else
                                             f"[red]NO[/red]: {check.counts.fixable} fixable"))
    for line in check.findings:
        console.print(f"  {line}", highlight=False, markup=False)
    console.print(f"one allocation's story: billing-recon allocations show demo-{tag}-gpu-orphan")
    return not missed and unchanged and fixed


async def _inject_allocation_drift(conn, customer: str, tag: str, as_of: datetime) -> list[str]:
    """A GPU customer's allocations as the application would have written them, each broken the
    way ReconcileAllocations repairs: a lost usage record, a record never closed, a closed record
    never billed, a paid session never credited."""
    h = timedelta(hours=1)
    await conn.execute("INSERT INTO billing.customers (customer_id, name) VALUES ($1, 'Demo GPU customer')", customer)
    await contract.upsert_rate(conn, contract.Rate(
        resource_class=GPU_CLASS, effective_from=datetime(2020, 1, 1, tzinfo=UTC), rate_minor=Decimal(GPU_RATE_PER_MINUTE),
        unit=TimeUnit.MINUTE, meter=GPU_METER))
    missing, orphan, unbilled = (f"demo-{tag}-gpu-{k}" for k in ("missing", "orphan", "unbilled"))
    # 1. missing open usage: active for 3 h, its usage record lost.
    await contract.activate(conn, contract.Allocation(
        allocation_id=missing, customer_id=customer, resource_class=GPU_CLASS, activated_at=as_of - 3 * h),
        f"u-{missing}")
    await conn.execute("DELETE FROM billing.duration_usage WHERE usage_id = $1", f"u-{missing}")
    # 2. orphan open usage: released an hour ago, its record never closed.
    await contract.activate(conn, contract.Allocation(
        allocation_id=orphan, customer_id=customer, resource_class=GPU_CLASS, activated_at=as_of - 4 * h),
        f"u-{orphan}")
    await contract.set_status(conn, orphan, AllocationStatus.RELEASED, as_of - h)
    # 3. unbilled closed usage: 3 h, closed with its cost, never debited.
    await contract.activate(conn, contract.Allocation(
        allocation_id=unbilled, customer_id=customer, resource_class=GPU_CLASS, activated_at=as_of - 5 * h),
        f"u-{unbilled}")
    await contract.set_status(conn, unbilled, AllocationStatus.RELEASED, as_of - 2 * h)
    await contract.close_usage(conn, f"u-{unbilled}", as_of - 2 * h, accrued_cost_minor=180 * GPU_RATE_PER_MINUTE)
    # 4. payment drift: a completed payment whose ledger credit was never booked.
    await contract.record_payment(conn, contract.PaymentSession(
        session_id=f"demo-{tag}-ps", customer_id=customer, amount_minor=2500,
        status=PaymentStatus.COMPLETED))
    return [f"missing usage: {missing} active for 3 h, no open usage record",
            f"orphan usage: {orphan} released 1 h ago, its record still open",
            f"unbilled usage: {unbilled} ran 3 h, record closed, never debited ({180 * GPU_RATE_PER_MINUTE} minor units)",
            f"payment drift: demo-{tag}-ps completed (2500 minor units), no ledger credit"]


async def _ensure_meters(stripe) -> dict[str, str]:
    existing = {m.event_name: m.id for m in (await stripe.v1.billing.meters.list_async(params={"limit": 100})).data
                if m.status == "active"}
    for name, display in METERS.items():
        if name not in existing:
            m = await stripe.v1.billing.meters.create_async(params={
                "display_name": display, "event_name": name, "default_aggregation": {"formula": "sum"}})
            existing[name] = m.id
    return {n: existing[n] for n in METERS}


def _event(rng: random.Random, customers, start, tag: str, i: int) -> UsageEvent:
    cid, _ = customers[rng.randrange(len(customers))]
    meter = rng.choice(list(METERS))
    day = start + timedelta(days=rng.randrange(DAYS))
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=rng.randrange(86400))
    at = min(at, datetime.now(UTC) - timedelta(seconds=1))
    qty = Decimal(rng.randint(1, 50)) if meter == "api_requests" else Decimal(rng.randint(1, 40)) / 4
    return UsageEvent(request_id=f"req-{tag}-{i}", customer_id=cid, meter=meter, quantity=qty, occurred_at=at)


async def _inject(conn, stripe, rng, customers, meter_ids, start, today, tag) -> list[str]:
    out = []
    # 1. lost push: Stripe lost one of our events (cancelled behind our back).
    lost = await queries.first_push(conn, customers[0][0], sent=True)
    await stripe.v1.billing.meter_event_adjustments.create_async(params={
        "event_name": lost["meter"], "type": "cancel", "cancel": {"identifier": lost["identifier"]}})
    out.append(f"lost push: {lost['customer_id']} {lost['meter']} {lost['usage_day']} ({lost['value']}) vanished from Stripe")
    # 2. double push: another system sent the same usage twice.
    cid, sid = customers[1]
    row = await queries.first_push(conn, cid)
    await stripe.v1.billing.meter_events.create_async(params={
        "event_name": row["meter"], "identifier": f"legacy-cron-{tag}-dup",
        "timestamp": int(row["event_timestamp"].timestamp()),
        "payload": {"stripe_customer_id": sid, "value": str(row["value"])}})
    out.append(f"double push: {cid} {row['meter']} {row['usage_day']} sent twice (+{row['value']})")
    # 3. late usage: ingested after the sync, never pushed.
    late = UsageEvent(request_id=f"req-{tag}-late", customer_id=customers[2][0], meter="api_requests",
                      quantity=Decimal(42), occurred_at=datetime.now(UTC) - timedelta(minutes=5))
    await ingest(conn, [late], source="demo")
    out.append(f"late usage: {customers[2][0]} api_requests +42 today, not yet in Stripe")
    # 4. corrupted counter.
    await conn.execute("UPDATE billing.usage_counters SET value = value + 137 WHERE customer_id = $1 AND meter = 'api_requests'",
                       customers[3][0])
    out.append(f"corrupted counter: {customers[3][0]} api_requests +137")
    # 5. orphan counter: a counter with no usage behind it.
    period = today.replace(day=1)
    nxt = (period + timedelta(days=32)).replace(day=1)
    await conn.execute(
        "INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value) VALUES ($1, 'gpu_minutes', $2, $3, 55) "
        "ON CONFLICT DO NOTHING", customers[4][0], period, nxt)
    out.append(f"orphan counter: {customers[4][0]} gpu_minutes = 55 with no usage")
    # 6. quota crossing: the counter under-counts and sits below the quota; the ledger is above it.
    ledger = await queries.usage_total(conn, customers[5][0], "api_requests")
    await conn.execute("UPDATE billing.usage_counters SET value = $2, quota = $3 WHERE customer_id = $1 AND meter = 'api_requests'",
                       customers[5][0], ledger / 2, ledger - 1)
    out.append(f"quota crossing: {customers[5][0]} counter {ledger / 2} under quota {ledger - 1}, ledger {ledger} over it")
    return out


async def _snapshot(conn, gateway, customers, meter_ids, start, today) -> dict:
    """(customer, meter) -> (ledger, counter, stripe) over the window."""
    ids = [c for c, _ in customers]
    ledger = await queries.usage_by_key(conn, ids, datetime.combine(start, datetime.min.time(), tzinfo=UTC))
    counters = await queries.counters_by_key(conn, ids)
    out = {}
    for cid, sid in customers:
        for meter, mid in meter_ids.items():
            s = sum((await gateway.daily_summaries(mid, sid, start, today)).values(), Decimal(0))
            out[(cid, meter)] = (Decimal(ledger.get((cid, meter), 0)), Decimal(counters.get((cid, meter), 0)), s)
    for (cid, meter), v in counters.items():
        if meter not in meter_ids:
            out[(cid, meter)] = (Decimal(ledger.get((cid, meter), 0)), Decimal(v), Decimal(ledger.get((cid, meter), 0)))
    return out


async def _run(client: Client, settings, ui: str, request: ReconcileUsageInput, workflow_id: str,
               approver: str | None = None) -> ReconcileResult:
    console.print(f"run {workflow_id}: {ui}/namespaces/default/workflows/{workflow_id}")
    handle = await start(ReconcileUsage.run, request, workflow_id, client=client, task_queue=settings.task_queue)
    approved = False

    async def approve_when_held(p: ReconcileProgress) -> None:
        nonlocal approved
        if approver and not approved and p.phase.value == "awaiting_approval":
            console.print(f"{p.counts.held_for_approval} over-reporting correction(s) beyond epsilon held "
                          f"for approval; approving as {approver}")
            await decide(handle, ApprovalDecision(actor=approver, reason="demo"), approved=True)
            approved = True

    return await follow(handle, ReconcileProgress, approve_when_held)


def _counts_table(title: str, r: ReconcileResult) -> None:
    t = Table(title=f"{title}: {r.status.value}")
    t.add_column("count")
    t.add_column("value", justify="right")
    for k, v in r.counts.model_dump().items():
        if v:
            t.add_row(k, str(v))
    console.print(t)


def _before_after(before: dict, after: dict) -> None:
    t = Table(title="keys that drifted (ledger / counter / Stripe)")
    for col in ("customer", "meter", "before", "after"):
        t.add_column(col)
    for key in sorted(before):
        b, a = before[key], after.get(key, before[key])
        if b[0] == b[1] == b[2] and a == b:
            continue
        t.add_row(key[0], key[1], " / ".join(map(_fmt, b)), " / ".join(map(_fmt, a)))
    console.print(t)


def _fmt(d: Decimal) -> str:
    return format(d.normalize(), "f") if d == d.to_integral() else f"{d:.2f}"
