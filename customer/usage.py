"""This period's usage of one customer, as the usage reconciliation sees it: the same reads
(`reconcile.store.read_batch`: ledger, counters, our outbox in one snapshot), Stripe's daily
summaries and the pure `plan_batch` in observe mode. Nothing is recorded or written: the
findings are what a ReconcileUsage run over the current period would find for this customer."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import stripe

from billing.periods import billing_period, current_period_window
from billing.policy import LIVE_STATUSES
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway
from common.types import Mode
from customer.types import MeterUsage, Usage, UsageFinding
from reconcile import store
from reconcile.scan import BatchRows, Customer, ScanPolicy, Summaries, plan_batch
from reconcile.types import MeterInfo, Policy, RunContext, WriteMode

SUM = "sum"  # only sum meters are reconciled (reconcile.runs.start_run)
SHOW_RUN_ID = "customer-show"  # never recorded: plan_batch needs a run context


async def period_usage(pool: asyncpg.Pool, gateway: StripeGateway, settings: Settings, customer_id: str,
                       stripe_customer_id: str | None, now: datetime | None = None) -> Usage:
    now = now or datetime.now(UTC)
    start, through = current_period_window(now.date())
    meters = [m for m in await gateway.list_meters() if m.status == "active"]
    ctx = RunContext(
        run_id=SHOW_RUN_ID, workflow_run_id=SHOW_RUN_ID, mode=Mode.DRY_RUN, window_start=start, window_end=through,
        customers=[customer_id], meters=[MeterInfo(event_name=m.event_name, stripe_meter_id=m.id)
                                         for m in meters if m.formula == SUM],
        unsupported_meters={m.event_name: m.formula for m in meters if m.formula != SUM},
        policy=Policy(epsilon=settings.recon_epsilon, settle_seconds=settings.recon_settle_seconds,
                      auto_approve_over_reporting=settings.recon_auto_approve_over_reporting,
                      page_size=settings.recon_page_size),
        actor=SHOW_RUN_ID)
    who = Customer(customer_id, stripe_customer_id)
    rows = await store.read_batch(pool, ctx, [who])
    summaries = await _summaries(gateway, ctx, who)
    plan = plan_batch(rows, summaries, ScanPolicy.for_page(ctx, WriteMode.OBSERVE, verify=False, now=now))
    findings = [UsageFinding(key=f.key, kind=f.kind.value, meter=f.meter, day=f.usage_day, period_start=f.period_start,
                             ledger=f.ledger, counter=f.counter, pushed=f.pushed, stripe=f.stripe, action=f.action,
                             detail=f.detail)
                for f in plan.findings]
    return Usage(period_start=start, period_end=billing_period(start)[1], through=through,
                 meters=totals(rows, summaries, customer_id, start, through), findings=findings)


def totals(rows: BatchRows, summaries: Summaries, customer_id: str, start: date, through: date) -> list[MeterUsage]:
    """Per meter, the period so far: L, C, P (live pushes) and S (None: Stripe not read)."""
    by_meter: dict[str, MeterUsage] = defaultdict(lambda: MeterUsage(meter=""))

    def meter(name: str) -> MeterUsage:
        m = by_meter[name]
        m.meter = name
        return m

    for d in rows.ledger_days:
        if start <= d.day <= through:
            meter(d.meter).ledger += d.total
    for c in rows.counters:
        if c.period_start == start:
            m = meter(c.meter)
            m.counter, m.quota = c.value, c.quota
    for p in rows.pushes:
        if p.push.status in LIVE_STATUSES:
            meter(p.meter).pushed += p.push.value
    for (cid, name), days in summaries.values.items():
        if cid == customer_id:
            meter(name).stripe = sum((v for d, v in days.items() if start <= d <= through), Decimal(0))
    return [by_meter[k] for k in sorted(by_meter)]


async def _summaries(gateway: StripeGateway, ctx: RunContext, who: Customer) -> Summaries:
    """Stripe's daily values per meter; a read Stripe refuses is reported as the scan reports it."""
    out = Summaries()
    if who.stripe_customer_id is None:
        return out
    for m in ctx.meters:
        try:
            out.values[(who.customer_id, m.event_name)] = await gateway.daily_summaries(
                m.stripe_meter_id, who.stripe_customer_id, ctx.window_start, ctx.window_end)
        except stripe.InvalidRequestError as e:
            out.unreadable[(who.customer_id, m.event_name)] = f"Stripe refused the summary read: {e.user_message or e}"
    return out
