"""Regenerate tests/histories/*.json: real workflows through the real worker on the dev server,
with an embedded Postgres and the Stripe emulator (the session fixtures of tests/conftest.py).

    .venv/bin/python tests/workflow/record_histories.py       # or
    .venv/bin/pytest tests/workflow/record_histories.py [-k webhook | -k operations | -k resync | -k invoice | -k dismiss | -k revenue]

Not collected by a plain `pytest` run (the file name does not match test_*.py). Re-record when a
workflow changes *on purpose* and commit the new files next to the old ones (keep the old ones:
they are what running workflows look like). tests/workflow/test_replay.py replays every file.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle

import worker as worker_module
from billing import db
from billing.ingest import UsageEvent, ingest
from billing.settings import Settings
from common.types import Mode, PauseRequest, RunStatus
from health.types import SmokeCheck
from reconcile.types import (
    ApprovalDecision,
    Phase,
    ReconcileProgress,
    ReconcileResult,
    ReconcileUsageInput,
)

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
METER = "api_requests"


def settings_for(postgres_dsn: str, emulator: str) -> Settings:
    return Settings(
        DATABASE_URL=postgres_dsn, STRIPE_API_BASE=emulator, STRIPE_API_KEY="sk_test_123",
        STRIPE_RATE_LIMIT=0, RECON_SETTLE_SECONDS=1, DATABASE_POOL_MAX=5)


async def seed(postgres_dsn: str, stripe_client, tag: str, customers: int = 3) -> list[str]:
    """A sum meter, customers mapped to Stripe, a few days of usage and correct counters."""
    await stripe_client.v1.billing.meters.create_async(params={
        "display_name": "API requests", "event_name": METER, "default_aggregation": {"formula": "sum"}})
    conn = await db.connect(postgres_dsn)
    try:
        ids: list[str] = []
        today = datetime.now(UTC).date()
        events: list[UsageEvent] = []
        for i in range(customers):
            cid = f"{tag}-c{i}"
            cus = await stripe_client.v1.customers.create_async(params={"name": cid})
            await conn.execute(
                "INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ($1, $2)", cid, cus.id)
            ids.append(cid)
            for d in range(3):
                day = today - timedelta(days=d)
                at = min(datetime.combine(day, time(1, 0), tzinfo=UTC), datetime.now(UTC) - timedelta(minutes=1))
                events.append(UsageEvent(request_id=f"{tag}-{i}-{d}", customer_id=cid, meter=METER,
                                         quantity=Decimal(10 + i + d), occurred_at=at))
        await ingest(conn, events, source="record")
        await conn.execute(
            """
            INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
            SELECT customer_id, meter, p, (p + interval '1 month')::date, sum(quantity)
              FROM (SELECT customer_id, meter, quantity,
                           date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS p
                      FROM billing.usage_events WHERE customer_id = ANY($1)) u
             GROUP BY 1, 2, 3
            """, ids)
        return ids
    finally:
        await conn.close()


async def wait_phase(handle: WorkflowHandle, phase: Phase, limit_seconds: float = 60) -> None:
    async def poll() -> None:
        while True:
            p = await handle.query("progress", result_type=ReconcileProgress)
            if p is not None and p.phase == phase:
                return
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), limit_seconds)


async def save(handle: WorkflowHandle, name: str) -> Path:
    history = await handle.fetch_history()
    path = HISTORIES / f"{name}.json"
    path.write_text(history.to_json())
    return path


async def record_all(client: Client, settings: Settings, task_queue: str, postgres_dsn: str,
                     stripe_client) -> list[Path]:
    tag = f"rec{uuid.uuid4().hex[:6]}"
    ids = await seed(postgres_dsn, stripe_client, tag)
    today = datetime.now(UTC).date()
    window = dict(start_date=today - timedelta(days=2), end_date=today, customers=ids, actor="recorder")
    paths: list[Path] = []
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            async def run(name: str, inp: ReconcileUsageInput) -> tuple[WorkflowHandle, ReconcileResult]:
                handle = await client.start_workflow("ReconcileUsage", inp, id=f"{tag}-{name}",
                                                     task_queue=task_queue, result_type=ReconcileResult)
                return handle, await asyncio.wait_for(handle.result(), 120)

            # 1. apply: the initial sync (pushes, settle timer, verify pass).
            handle, res = await run("apply", ReconcileUsageInput(mode=Mode.APPLY, settle_seconds=1, **window))
            assert res.status == RunStatus.COMPLETED and res.counts.corrections_pushed > 0, res
            assert res.verify_counts is not None
            paths.append(await save(handle, "reconcile_usage_apply"))

            # Drift: late usage for one customer, a corrupted counter for another.
            conn = await db.connect(postgres_dsn)
            try:
                await ingest(conn, [UsageEvent(request_id=f"{tag}-late", customer_id=ids[0], meter=METER,
                                               quantity=Decimal(7),
                                               occurred_at=datetime.now(UTC) - timedelta(minutes=2))])
                await conn.execute("UPDATE billing.usage_counters SET value = value + 5 WHERE customer_id = $1",
                                   ids[1])
            finally:
                await conn.close()

            # 2. dry-run: finds the drift, changes nothing.
            handle, res = await run("dry-run", ReconcileUsageInput(mode=Mode.DRY_RUN, **window))
            assert res.status == RunStatus.COMPLETED and res.counts.drift_count >= 2, res
            paths.append(await save(handle, "reconcile_usage_dry_run"))

            # 3. plan: waits; pause/resume signals and the approve update land in the history.
            inp = ReconcileUsageInput(mode=Mode.PLAN, settle_seconds=1, **window)
            handle = await client.start_workflow("ReconcileUsage", inp, id=f"{tag}-plan",
                                                 task_queue=task_queue, result_type=ReconcileResult)
            await wait_phase(handle, Phase.AWAITING_APPROVAL)
            await handle.signal("pause", PauseRequest(actor="recorder", reason="recording"))
            await handle.signal("resume", PauseRequest(actor="recorder"))
            await handle.execute_update("approve", ApprovalDecision(actor="recorder", reason="recording"))
            res = await asyncio.wait_for(handle.result(), 120)
            assert res.status == RunStatus.COMPLETED and res.counts.drift_count >= 2, res
            paths.append(await save(handle, "reconcile_usage_plan_approve"))

            # 4. plan + reject.
            conn = await db.connect(postgres_dsn)
            try:
                await conn.execute("UPDATE billing.usage_counters SET value = value + 3 WHERE customer_id = $1",
                                   ids[2])
            finally:
                await conn.close()
            handle = await client.start_workflow("ReconcileUsage", inp, id=f"{tag}-plan-reject",
                                                 task_queue=task_queue, result_type=ReconcileResult)
            await wait_phase(handle, Phase.AWAITING_APPROVAL)
            await handle.execute_update("reject", ApprovalDecision(actor="recorder", reason="recording"))
            res = await asyncio.wait_for(handle.result(), 120)
            assert res.status == RunStatus.REJECTED, res
            paths.append(await save(handle, "reconcile_usage_plan_reject"))

            # 5. Smoke.
            handle = await client.start_workflow("Smoke", SmokeCheck(), id=f"{tag}-smoke",
                                                 task_queue=task_queue, result_type=SmokeCheck)
            check = await asyncio.wait_for(handle.result(), 60)
            assert METER in check.stripe_meters, check
            paths.append(await save(handle, "smoke"))
    finally:
        await close()
    return paths


async def record_webhooks(client: Client, settings: Settings, task_queue: str, postgres_dsn: str,
                          stripe_client) -> list[Path]:
    """ProcessStripeEvent (processed and failed) and ReplayWebhooks (dry-run and apply)."""
    from webhooks.activities import store_event_args, store_event_sql
    from webhooks.types import (
        ProcessEventInput,
        ProcessEventResult,
        ReplayResult,
        ReplayWebhooksInput,
    )

    tag = f"rec{uuid.uuid4().hex[:6]}"
    # Events Stripe holds but nobody delivered: a customer, its subscription.
    cus = await stripe_client.v1.customers.create_async(params={"name": tag, "metadata": {"customer_id": tag}})
    product = await stripe_client.v1.products.create_async(params={"name": tag})
    price = await stripe_client.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 900, "recurring": {"interval": "month"}})
    await stripe_client.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": price.id}]})
    events = [e.to_dict(for_json=True) for e in (await stripe_client.v1.events.list_async(params={"limit": 100})).data]
    created = next(e for e in events if e["type"] == "customer.created")
    paths: list[Path] = []
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            conn = await db.connect(postgres_dsn)
            try:
                await conn.execute(store_event_sql(), *store_event_args(created, "webhook"))
                # An event about a subscription Stripe does not have: fails permanently.
                bogus = {**created, "id": f"evt_{tag}bogus", "type": "customer.subscription.updated",
                         "data": {"object": {"id": f"sub_{tag}missing", "object": "subscription"}}}
                await conn.execute(store_event_sql(), *store_event_args(bogus, "webhook"))
            finally:
                await conn.close()
            handle = await client.start_workflow(
                "ProcessStripeEvent", ProcessEventInput(event_id=created["id"]), id=f"stripe-event-{created['id']}",
                task_queue=task_queue, result_type=ProcessEventResult)
            ok = await asyncio.wait_for(handle.result(), 60)
            assert ok.status == "processed", ok
            paths.append(await save(handle, "process_stripe_event"))
            handle = await client.start_workflow(
                "ProcessStripeEvent", ProcessEventInput(event_id=bogus["id"]), id=f"stripe-event-{bogus['id']}",
                task_queue=task_queue, result_type=ProcessEventResult)
            with pytest.raises(Exception, match="failed"):
                await asyncio.wait_for(handle.result(), 60)
            paths.append(await save(handle, "process_stripe_event_failed"))

            for mode in (Mode.DRY_RUN, Mode.APPLY):
                handle = await client.start_workflow(
                    "ReplayWebhooks", ReplayWebhooksInput(mode=mode, actor="recorder"), id=f"{tag}-replay-{mode.value}",
                    task_queue=task_queue, result_type=ReplayResult)
                res = await asyncio.wait_for(handle.result(), 60)
                assert res.counts.never_received > 0, res
                paths.append(await save(handle, f"replay_webhooks_{mode.value.replace('-', '_')}"))
    finally:
        await close()
    return paths


async def record_resync(client: Client, settings: Settings, task_queue: str, stripe_client,
                        emulator_admin) -> list[Path]:
    """ResyncSubscriptions and RepairCredits (dry-run, apply), AdjustCredits (applied, refused)."""
    from credits.types import (
        AdjustCreditsInput,
        AdjustCreditsResult,
        RepairCreditsInput,
        RepairResult,
    )
    from resync.types import ResyncResult, ResyncSubscriptionsInput
    from tests.integration.webhook_helpers import billing_scenario

    tag = f"rec{uuid.uuid4().hex[:6]}"
    # Stripe holds subscriptions and credit purchases that Postgres never heard of.
    act = await billing_scenario(stripe_client, emulator_admin, n_customers=2)
    paths: list[Path] = []
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            for mode in (Mode.DRY_RUN, Mode.APPLY):
                suffix = mode.value.replace("-", "_")
                handle = await client.start_workflow(
                    "ResyncSubscriptions", ResyncSubscriptionsInput(mode=mode, actor="recorder"),
                    id=f"{tag}-resync-{mode.value}", task_queue=task_queue, result_type=ResyncResult)
                sub = await asyncio.wait_for(handle.result(), 120)
                assert sub.counts.missing_local == len(act.subscriptions), sub
                paths.append(await save(handle, f"resync_subscriptions_{suffix}"))
                handle = await client.start_workflow(
                    "RepairCredits", RepairCreditsInput(mode=mode, actor="recorder"),
                    id=f"{tag}-repair-{mode.value}", task_queue=task_queue, result_type=RepairResult)
                cred = await asyncio.wait_for(handle.result(), 120)
                assert cred.counts.missing_grants == len(act.credit_sessions), cred
                paths.append(await save(handle, f"repair_credits_{suffix}"))
            customer = (await stripe_client.v1.customers.retrieve_async(act.customers[0])).metadata["customer_id"]
            handle = await client.start_workflow(
                "AdjustCredits", AdjustCreditsInput(customer=customer, amount=100, reason="recording", actor="recorder"),
                id=f"{tag}-adjust", task_queue=task_queue, result_type=AdjustCreditsResult)
            await asyncio.wait_for(handle.result(), 60)
            paths.append(await save(handle, "adjust_credits"))
            handle = await client.start_workflow(
                "AdjustCredits", AdjustCreditsInput(customer=customer, amount=-10**9, reason="recording",
                                                    actor="recorder"),
                id=f"{tag}-adjust-refused", task_queue=task_queue, result_type=AdjustCreditsResult)
            with pytest.raises(Exception, match="failed"):
                await asyncio.wait_for(handle.result(), 60)
            paths.append(await save(handle, "adjust_credits_refused"))
    finally:
        await close()
    return paths


async def test_record_resync_histories(temporal_env, postgres_dsn, clean_db, emulator, emulator_admin,
                                       stripe_client, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    paths = await record_resync(temporal_env.client, settings_for(postgres_dsn, emulator), task_queue,
                                stripe_client, emulator_admin)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")


async def record_invoices(client: Client, settings: Settings, task_queue: str, stripe_client) -> list[Path]:
    """ResyncInvoices (dry-run, apply) over invoices Postgres never heard of."""
    from resync.types import InvoiceResyncResult, ResyncInvoicesInput

    tag = f"rec{uuid.uuid4().hex[:6]}"
    cus = await stripe_client.v1.customers.create_async(params={"name": tag, "metadata": {"customer_id": tag}})
    for _ in range(2):
        inv = await stripe_client.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})
        await stripe_client.v1.invoices.finalize_invoice_async(inv.id, params={"auto_advance": False})
    paths: list[Path] = []
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            for mode in (Mode.DRY_RUN, Mode.APPLY):
                handle = await client.start_workflow(
                    "ResyncInvoices", ResyncInvoicesInput(mode=mode, actor="recorder"),
                    id=f"{tag}-resync-invoices-{mode.value}", task_queue=task_queue, result_type=InvoiceResyncResult)
                res = await asyncio.wait_for(handle.result(), 120)
                assert res.counts.missing_local == 2, res
                paths.append(await save(handle, f"resync_invoices_{mode.value.replace('-', '_')}"))
    finally:
        await close()
    return paths


async def test_record_invoice_histories(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    paths = await record_invoices(temporal_env.client, settings_for(postgres_dsn, emulator), task_queue,
                                  stripe_client)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")


async def record_dismiss(client: Client, settings: Settings, task_queue: str, postgres_dsn: str) -> list[Path]:
    """DismissStripeEvent: a failed event dismissed, and a processed one refused."""
    from webhooks.activities import store_event_args, store_event_sql
    from webhooks.types import DismissEventInput, DismissEventResult

    tag = f"rec{uuid.uuid4().hex[:6]}"
    base = {"object": "event", "created": int(datetime.now(UTC).timestamp()), "type": "customer.subscription.updated",
            "data": {"object": {"id": f"sub_{tag}", "object": "subscription"}}}
    failed, processed = {**base, "id": f"evt_{tag}failed"}, {**base, "id": f"evt_{tag}processed"}
    conn = await db.connect(postgres_dsn)
    try:
        for e in (failed, processed):
            await conn.execute(store_event_sql(), *store_event_args(e, "webhook"))
        await conn.execute("UPDATE billing.stripe_events SET status = 'failed', error = 'recorded' WHERE event_id = $1",
                           failed["id"])
        await conn.execute("UPDATE billing.stripe_events SET status = 'processed' WHERE event_id = $1", processed["id"])
    finally:
        await conn.close()
    paths: list[Path] = []
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            for name, e in (("dismiss_stripe_event", failed), ("dismiss_stripe_event_refused", processed)):
                handle = await client.start_workflow(
                    "DismissStripeEvent", DismissEventInput(event_id=e["id"], actor="recorder", reason="recording"),
                    id=f"dismiss-event-{e['id']}", task_queue=task_queue, result_type=DismissEventResult)
                if e is failed:
                    assert not (await asyncio.wait_for(handle.result(), 60)).already_dismissed
                else:
                    with pytest.raises(Exception, match="failed"):
                        await asyncio.wait_for(handle.result(), 60)
                paths.append(await save(handle, name))
    finally:
        await close()
    return paths


async def test_record_dismiss_histories(temporal_env, postgres_dsn, clean_db, emulator, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    paths = await record_dismiss(temporal_env.client, settings_for(postgres_dsn, emulator), task_queue, postgres_dsn)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")


async def record_operations(client: Client, settings: Settings, task_queue: str, postgres_dsn: str,
                            stripe_client) -> list[Path]:
    """CatchUpBackfill over two days (children, replay) and AutoHealControl (pause, resume)."""
    from autoheal.types import AUTOHEAL_WORKFLOW_ID, AutohealControlInput, AutohealView
    from backfill.types import BackfillResult, CatchUpBackfillInput

    tag = f"rec{uuid.uuid4().hex[:6]}"
    await seed(postgres_dsn, stripe_client, tag, customers=2)
    today = datetime.now(UTC).date()
    paths: list[Path] = []
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            inp = CatchUpBackfillInput(start_date=today - timedelta(days=1), end_date=today, mode=Mode.APPLY,
                                       settle_seconds=1, resync_subscriptions=False, actor="recorder")
            handle = await client.start_workflow("CatchUpBackfill", inp, id=f"{tag}-backfill",
                                                 task_queue=task_queue, result_type=BackfillResult)
            res = await asyncio.wait_for(handle.result(), 120)
            assert [d.outcome.value for d in res.days] == ["done", "done"], res
            paths.append(await save(handle, "catch_up_backfill"))

            handle = await client.start_workflow(
                "AutoHealControl", AutohealControlInput(), id=AUTOHEAL_WORKFLOW_ID, task_queue=task_queue,
                start_signal="pause", start_signal_args=[PauseRequest(actor="recorder", reason="recording")])
            for want in (True, False):
                if not want:
                    await handle.signal("resume", PauseRequest(actor="recorder"))
                for _ in range(100):
                    if (await handle.query("state", result_type=AutohealView)).paused == want:
                        break
                    await asyncio.sleep(0.1)
            await handle.terminate("recorded")  # it runs forever by design
            paths.append(await save(handle, "autoheal_control"))
    finally:
        await close()
    return paths


async def record_continue_as_new(client: Client, settings: Settings, task_queue: str, postgres_dsn: str,
                                 stripe_client) -> list[Path]:
    """ReconcileUsage continuing-as-new in the middle of its scan, and the run that finishes.

    Pages of one customer (`RECON_PAGE_SIZE=1`) on a dev server that suggests continue-as-new
    after a few history events (`limit.historyCount.suggestContinueAsNew`, see
    `test_record_continue_as_new_histories`): the workflow's own `is_continue_as_new_suggested`
    path, no test-only code in the workflow."""
    tag = f"rec{uuid.uuid4().hex[:6]}"
    ids = await seed(postgres_dsn, stripe_client, tag, customers=4)
    today = datetime.now(UTC).date()
    paths: list[Path] = []
    small_pages = settings.model_copy(update={"recon_page_size": 1})
    w, close = await worker_module.build_worker(client, small_pages, task_queue=task_queue)
    try:
        async with w:
            inp = ReconcileUsageInput(mode=Mode.APPLY, settle_seconds=1, start_date=today - timedelta(days=2),
                                      end_date=today, customers=ids, actor="recorder")
            handle = await client.start_workflow("ReconcileUsage", inp, id=f"{tag}-can", task_queue=task_queue,
                                                 result_type=ReconcileResult)
            res = await asyncio.wait_for(handle.result(), 120)
            assert res.status == RunStatus.COMPLETED and res.counts.corrections_pushed > 0, res
            first = client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
            history = await first.fetch_history()
            kinds = [e.event_type for e in history.events]
            from temporalio.api.enums.v1 import EventType

            assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW in kinds, "no continue-as-new"
            path = HISTORIES / "reconcile_usage_continue_as_new_first.json"
            path.write_text(history.to_json())
            paths.append(path)
            last = client.get_workflow_handle(handle.id)
            desc = await last.describe()
            assert desc.run_id != handle.first_execution_run_id
            paths.append(await save(last, "reconcile_usage_continue_as_new_last"))
    finally:
        await close()
    return paths


async def test_record_continue_as_new_histories(postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    from temporalio.testing import WorkflowEnvironment

    from common.client import data_converter
    from devstack.components import find_temporal_binary

    HISTORIES.mkdir(parents=True, exist_ok=True)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_binary(), data_converter=data_converter, ui=False,
        dev_server_log_level="warn",
        dev_server_extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=12"])
    try:
        paths = await record_continue_as_new(env.client, settings_for(postgres_dsn, emulator), task_queue,
                                             postgres_dsn, stripe_client)
    finally:
        await env.shutdown()
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")


async def test_record_operations_histories(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    paths = await record_operations(temporal_env.client, settings_for(postgres_dsn, emulator), task_queue,
                                    postgres_dsn, stripe_client)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")


async def test_record_webhook_histories(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    paths = await record_webhooks(temporal_env.client, settings_for(postgres_dsn, emulator), task_queue,
                                  postgres_dsn, stripe_client)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")


async def test_record_histories(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    paths = await record_all(temporal_env.client, settings_for(postgres_dsn, emulator), task_queue,
                             postgres_dsn, stripe_client)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")


async def record_revenue(client: Client, settings: Settings, task_queue: str, stripe_client) -> list[Path]:
    """RevenueReconciliation (dry-run, apply) over today: two paid invoices the mirror never
    heard of, one of them partly refunded."""
    from revenue.types import RevenueInput, RevenueResult

    tag = f"rec{uuid.uuid4().hex[:6]}"
    cus = await stripe_client.v1.customers.create_async(params={"name": tag, "metadata": {"customer_id": tag}})
    charges = []
    for amount in (1200, 800):
        inv = await stripe_client.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})
        await stripe_client.v1.invoice_items.create_async(
            params={"customer": cus.id, "invoice": inv.id, "amount": amount})
        await stripe_client.v1.invoices.pay_async(inv.id)
        payment = (await stripe_client.v1.invoice_payments.list_async(params={"invoice": inv.id})).data[0]
        charges.append(payment.payment.charge)
    await stripe_client.v1.refunds.create_async(params={"charge": charges[0], "amount": 200})
    today = datetime.now(UTC).date()
    paths: list[Path] = []
    w, close = await worker_module.build_worker(client, settings, task_queue=task_queue)
    try:
        async with w:
            for mode in (Mode.DRY_RUN, Mode.APPLY):
                handle = await client.start_workflow(
                    "RevenueReconciliation",
                    RevenueInput(since=today, until=today, mode=mode, actor="recorder", page_size=1),
                    id=f"{tag}-revenue-{mode.value}", task_queue=task_queue, result_type=RevenueResult)
                res = await asyncio.wait_for(handle.result(), 120)
                assert res.counts.by_kind == {"missing_locally": 2}, res
                paths.append(await save(handle, f"revenue_reconciliation_{mode.value.replace('-', '_')}"))
    finally:
        await close()
    return paths


async def test_record_revenue_histories(temporal_env, postgres_dsn, clean_db, emulator, stripe_client, task_queue):
    HISTORIES.mkdir(parents=True, exist_ok=True)
    paths = await record_revenue(temporal_env.client, settings_for(postgres_dsn, emulator), task_queue,
                                 stripe_client)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size} bytes)")

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
