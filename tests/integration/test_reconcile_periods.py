"""Billing periods from subscriptions, the invoice grace and invoice adjustments for closed
periods, end to end: the dev server, Postgres and the emulator over HTTP through the SDK.

The emulator's clock starts days in the past (a test clock), subscriptions are anchored on
chosen midnights, then the clock is brought to now: each renewal leaves a draft invoice that
finalizes after the grace. Spec: docs/reconciliation.md "Billing periods", "Invoice
adjustments"."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.periods import day_start
from common.types import Mode, RunStatus
from reconcile.types import ApprovalDecision, Phase, ReconcileUsageInput

from .cli_helpers import cli
from .period_helpers import (
    METER,
    latest_invoice,
    meter_and_prices,
    midnight,
    mirror,
    report_directly,
    subscribe,
    use,
)
from .recon_helpers import make_settings, run, running_worker, start, wait_phase

pytestmark = pytest.mark.integration
DAY = 86400


def request(customers, start: date, end: date, mode: Mode) -> ReconcileUsageInput:
    return ReconcileUsageInput(start_date=start, end_date=end, customers=[c.customer_id for c in customers],
                               settle_seconds=1, actor="pytest", mode=mode)


async def _findings(pool, run_id: str) -> dict[str, dict]:
    rows = await pool.fetch("SELECT * FROM billing.discrepancies WHERE run_id = $1", run_id)
    return {r["discrepancy_key"]: dict(r) for r in rows}


async def test_counters_and_quota_transitions_follow_each_customers_period(
        clean_db, stripe_client, emulator_admin, temporal_env, task_queue, postgres_dsn, emulator):
    today = datetime.now(UTC).date()
    await emulator_admin.reset(reset_config=True, clock_offset_seconds=-10 * DAY)
    _, prices = await meter_and_prices(stripe_client)
    a = await subscribe(clean_db, stripe_client, "anchored-3", prices["per_unit"], midnight(today - timedelta(days=3)))
    b = await subscribe(clean_db, stripe_client, "anchored-1", prices["per_unit"], midnight(today - timedelta(days=1)))
    await emulator_admin.advance_clock(10 * DAY)  # back to now: both first periods renewed
    for c in (a, b):
        await mirror(clean_db, stripe_client, c)
    await use(clean_db, a, today - timedelta(days=5), 10)  # a's previous period
    await use(clean_db, a, today - timedelta(days=2), 15)  # a's current period
    await use(clean_db, b, today - timedelta(days=2), 4)  # b's previous period
    await use(clean_db, b, today, 5, hour=0)  # b's current period
    # The app keeps counters per its customer's period, with quotas.
    await clean_db.executemany(
        "INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value, quota) "
        "VALUES ($1, $2, $3, $4, 0, $5)",
        [(a.customer_id, METER, today - timedelta(days=3), _month_after(today - timedelta(days=3)), Decimal(10)),
         (b.customer_id, METER, today - timedelta(days=1), _month_after(today - timedelta(days=1)), Decimal(100))])

    settings = make_settings(postgres_dsn, emulator)
    async with running_worker(temporal_env.client, settings, task_queue):
        result = await run(temporal_env.client, task_queue,
                           request([a, b], today - timedelta(days=5), today, Mode.APPLY), "periods-counters")
    assert result.status == RunStatus.COMPLETED
    counters = {(r["customer_id"], r["period_start"]): (r["value"], r["period_end"]) for r in await clean_db.fetch(
        "SELECT customer_id, period_start, period_end, value FROM billing.usage_counters")}
    a_prev = _month_before(today - timedelta(days=3))
    b_prev = _month_before(today - timedelta(days=1))
    assert counters == {
        (a.customer_id, today - timedelta(days=3)): (Decimal(15), _month_after(today - timedelta(days=3))),
        (a.customer_id, a_prev): (Decimal(10), today - timedelta(days=3)),
        (b.customer_id, today - timedelta(days=1)): (Decimal(5), _month_after(today - timedelta(days=1))),
        (b.customer_id, b_prev): (Decimal(4), today - timedelta(days=1)),
    }
    # Only a's repair crosses its quota (0 -> 15 > 10); b's (0 -> 5) stays under 100.
    assert result.counts.over_quota_transitions == 1
    # The current periods' usage was pushed; the previous periods' invoices are final (1 h
    # grace): judged per invoice, never pushed.
    findings = await _findings(clean_db, "periods-counters")
    adjust = {k: f for k, f in findings.items() if k.startswith("adjust|")}
    assert {(f["customer_id"], f["adjust_quantity"], f["adjust_amount"]) for f in adjust.values()} == {
        (a.customer_id, Decimal(10), 20), (b.customer_id, Decimal(4), 8)}
    assert {f["status"] for f in adjust.values()} == {"unfixable"}  # apply mode never adjusts invoices
    pushed = await clean_db.fetch("SELECT customer_id, usage_day, value FROM billing.stripe_usage_pushes")
    assert {(r["customer_id"], r["usage_day"], r["value"]) for r in pushed} == {
        (a.customer_id, today - timedelta(days=2), Decimal(15)), (b.customer_id, today, Decimal(5))}


async def test_usage_during_the_grace_lands_on_the_old_invoice(
        clean_db, stripe_client, emulator_admin, temporal_env, task_queue, postgres_dsn, emulator):
    today = datetime.now(UTC).date()
    await emulator_admin.reset(reset_config=True, clock_offset_seconds=-3 * DAY,
                               config={"invoice_finalization_grace_seconds": 72 * 3600})
    _, prices = await meter_and_prices(stripe_client)
    g = await subscribe(clean_db, stripe_client, "grace", prices["per_unit"], midnight(today))
    early = await subscribe(clean_db, stripe_client, "finalized-early", prices["per_unit"], midnight(today))
    await emulator_admin.advance_clock(3 * DAY)
    draft = await latest_invoice(stripe_client, g)
    assert draft.status == "draft" and draft.period_end == midnight(today)
    for c in (g, early):
        await mirror(clean_db, stripe_client, c)
        await use(clean_db, c, today - timedelta(days=1), 30)  # never reported: the old period
    # Finalized by hand in Stripe; the mirror has not heard of it yet (the webhook is late).
    early_invoice = await latest_invoice(stripe_client, early)
    await stripe_client.v1.invoices.finalize_invoice_async(early_invoice.id)

    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        # The default window reaches back to the previous period while its invoice is a draft.
        default = ReconcileUsageInput(customers=[g.customer_id], actor="pytest", mode=Mode.DRY_RUN)
        await run(temporal_env.client, task_queue, default, "periods-default-window")
        assert await clean_db.fetchval("SELECT window_start FROM billing.reconciliation_runs WHERE run_id = $1",
                                       "periods-default-window") == today - timedelta(days=3)
        result = await run(temporal_env.client, task_queue,
                           request([g, early], today - timedelta(days=1), today, Mode.APPLY), "periods-grace")
    assert result.status == RunStatus.COMPLETED and result.counts.corrections_pushed == 1
    pushed = await clean_db.fetch("SELECT customer_id, event_timestamp FROM billing.stripe_usage_pushes")
    assert [r["customer_id"] for r in pushed] == [g.customer_id]
    assert day_start(today - timedelta(days=1)) <= pushed[0]["event_timestamp"] < day_start(today)  # the old period
    # Stripe said the other invoice is final: nothing pushed into it, the finding is stale.
    stale = await clean_db.fetchrow(
        "SELECT status, detail FROM billing.discrepancies WHERE run_id = 'periods-grace' AND customer_id = $1 "
        "AND discrepancy_key LIKE 'stripe|%'", early.customer_id)
    assert stale["status"] == "stale" and f"invoice {early_invoice.id} is" in stale["detail"]
    await emulator_admin.advance_clock(3 * DAY)  # the grace ends: the draft finalizes
    inv = await stripe_client.v1.invoices.retrieve_async(draft.id)
    assert inv.status == "paid" and inv.lines.data[0].quantity == 30 and inv.amount_paid == 60


async def test_closed_periods_become_approved_adjustments_exactly_once(
        clean_db, stripe_client, emulator_admin, temporal_env, task_queue, postgres_dsn, emulator, cli_env,
        tmp_path):
    today = datetime.now(UTC).date()
    await emulator_admin.reset(reset_config=True, clock_offset_seconds=-3 * DAY)
    _, prices = await meter_and_prices(stripe_client)
    anchor = midnight(today - timedelta(days=1))
    under = await subscribe(clean_db, stripe_client, "under", prices["per_unit"], anchor)
    tiered = await subscribe(clean_db, stripe_client, "tiered", prices["graduated"], anchor)
    over = await subscribe(clean_db, stripe_client, "over", prices["per_unit"], anchor)
    for c, billed in ((under, 1000), (tiered, 900), (over, 1000)):
        await report_directly(stripe_client, c, billed)
    await emulator_admin.advance_clock(3 * DAY)  # the period ended yesterday; its invoice is paid
    used_day = today - timedelta(days=2)
    for c, used in ((under, 1500), (tiered, 1200), (over, 700)):
        await use(clean_db, c, used_day, used)
        await mirror(clean_db, stripe_client, c)
    customers = [under, tiered, over]
    window = (today - timedelta(days=2), today)
    # Stripe fails the credit note's answer once after creating it (the worker retries no HTTP
    # call itself): the activity fails between Stripe's write and our `sent`, and is retried.
    await emulator_admin.configure(faults=[{"path_prefix": "/v1/credit_notes", "method": "POST", "status": 500,
                                            "after": True, "max_count": 1}])
    settings = make_settings(postgres_dsn, emulator, STRIPE_MAX_NETWORK_RETRIES=0)
    async with running_worker(temporal_env.client, settings, task_queue):
        # Nothing without approval: a plan, rejected.
        handle = await start(temporal_env.client, task_queue, request(customers, *window, Mode.PLAN), "periods-plan-1")
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        first = await _findings(clean_db, "periods-plan-1")
        await handle.execute_update("reject", ApprovalDecision(actor="finance@example.com", reason="not now"))
        assert (await handle.result()).status == RunStatus.REJECTED
        assert await clean_db.fetchval("SELECT count(*) FROM billing.invoice_adjustments") == 0
        assert (await stripe_client.v1.invoice_items.list_async(params={"customer": under.stripe_customer_id})).data == []
        # Re-planned: the same adjustments under the same identifiers, then approved.
        approved = await run(temporal_env.client, task_queue, request(customers, *window, Mode.PLAN),
                             "periods-plan-2", approver="finance@example.com")
        second = await _findings(clean_db, "periods-plan-2")
        # And once more: everything is adjusted, nothing left to propose.
        again = await run(temporal_env.client, task_queue, request(customers, *window, Mode.PLAN), "periods-plan-3")

    adjust = {f["customer_id"]: f for k, f in second.items() if k.startswith("adjust|")}
    assert {c: (f["adjust_quantity"], f["adjust_amount"]) for c, f in adjust.items()} == {
        under.customer_id: (Decimal(500), 1000),  # 500 x 2
        tiered.customer_id: (Decimal(300), 400),  # 100 x 2 + 200 x 0.5 + 100 flat
        over.customer_id: (Decimal(-300), -600),
    }
    # `skipped`: applied by the page attempt that the credit note's failure then failed.
    assert {f["status"] for f in adjust.values()} <= {"applied", "skipped"}
    assert {k: f["action_params"]["identifier"] for k, f in first.items() if k.startswith("adjust|")} == {
        k: f["action_params"]["identifier"] for k, f in second.items() if k.startswith("adjust|")}
    assert approved.status == RunStatus.COMPLETED and again.status == RunStatus.COMPLETED
    assert again.counts.held_for_approval == 0
    assert not [k for k in await _findings(clean_db, "periods-plan-3") if k.startswith("adjust|")]

    item = (await stripe_client.v1.invoice_items.list_async(params={"customer": under.stripe_customer_id})).data
    assert [(i.amount, i.invoice) for i in item] == [(1000, None)]  # pending: the next invoice's
    assert "periods-plan-2" in item[0].description
    tiered_items = (await stripe_client.v1.invoice_items.list_async(params={"customer": tiered.stripe_customer_id})).data
    assert [i.amount for i in tiered_items] == [400]
    notes = (await stripe_client.v1.credit_notes.list_async(params={"customer": over.stripe_customer_id})).data
    assert [(n.total, n.type) for n in notes] == [(600, "post_payment")]  # one, despite the retry
    assert (await stripe_client.v1.customers.retrieve_async(over.stripe_customer_id)).balance == -600
    assert (await emulator_admin.get_config())["faults"][0]["injected"] == 1
    outbox = await clean_db.fetch("SELECT kind, amount, status FROM billing.invoice_adjustments")
    assert sorted((r["kind"], r["amount"], r["status"]) for r in outbox) == [
        ("credit_note", 600, "sent"), ("invoice_item", 400, "sent"), ("invoice_item", 1000, "sent")]
    assert await clean_db.fetchval(
        "SELECT count(*) FROM billing.audit_log WHERE action = 'usage.invoice_adjustment'") == 3

    # Finance's CSV: one row per closed period, quantity and amount in minor units.
    export = tmp_path / "adjustments.csv"
    code, _, err = await cli(cli_env, "report", "periods-plan-2", "--export-adjustments", str(export))
    assert code == 0, err
    rows = {r["customer_id"]: r for r in csv.DictReader(export.open())}
    assert {c: (r["adjust_quantity"], r["adjust_amount"], r["currency"], r["action"]) for c, r in rows.items()} == {
        under.customer_id: ("500", "1000", "usd", "invoice_item"),
        tiered.customer_id: ("300", "400", "usd", "invoice_item"),
        over.customer_id: ("-300", "-600", "usd", "credit_note")}

    # The next invoice bills the adjustment.
    sub = await stripe_client.v1.subscriptions.retrieve_async(under.subscription_id)
    await emulator_admin.advance_clock(sub["items"].data[0].current_period_end - await emulator_admin.now() + 1)
    nxt = await latest_invoice(stripe_client, under)
    assert nxt.id != sub.latest_invoice and nxt.amount_due == 1000


def _month_after(d: date) -> date:
    from billing.periods import add_months
    return add_months(d, 1, d.day)


def _month_before(d: date) -> date:
    from billing.periods import add_months
    return add_months(d, -1, d.day)
