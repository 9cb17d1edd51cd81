"""`customer show` and `customer repair` as an operator runs them (the CLI in a subprocess), against
the real parts: the dev server, a worker, Postgres and the Stripe emulator over HTTP.

One customer is made equal to Stripe the way production does it (webhook replay for the
mirror, an apply reconciliation for usage), `show` must then be clean; a mismatch is injected
in every domain; `show` must name exactly those; a paused `repair --apply` writes nothing; a
`repair --apply` fixes all of them in one run with one audit row per fix; `show` is clean again
and a second `repair --apply` writes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from autoheal import switch
from billing.ingest import UsageEvent, ingest
from billing.periods import billing_period
from common.types import Mode
from customer.repair_workflow import RepairCustomer
from customer.types import RepairCustomerInput
from reconcile.types import ReconcileUsageInput
from starter.customer_commands import repair_workflow_id
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import create_meters, make_settings, running_worker
from tests.integration.recon_helpers import run as run_reconcile
from tests.integration.webhook_helpers import billing_scenario
from tests.integration.worker_helpers import spawn_worker, stop_worker
from webhooks.types import ReplayResult, ReplayWebhooksInput

pytestmark = pytest.mark.integration

WRITTEN = ("subscriptions", "invoices", "credit_ledger", "credit_balances", "usage_counters",
           "stripe_usage_pushes", "audit_log", "customers")


async def written(pool) -> dict[str, list[dict[str, Any]]]:
    return {t: [dict(r) for r in await pool.fetch(f"SELECT * FROM billing.{t} ORDER BY 1")] for t in WRITTEN}


async def synced_customer(client, tq, pool, sc, admin) -> dict[str, Any]:
    """One customer (subscription, paid invoice, credit purchase) mirrored by the webhook
    handlers, with usage on two meters pushed to Stripe by an apply reconciliation."""
    act = await billing_scenario(sc, admin, n_customers=1)
    replay = await client.execute_workflow("ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY),
                                           id=f"replay-{uuid.uuid4().hex[:8]}", task_queue=tq, result_type=ReplayResult)
    assert replay.counts.failed == 0, replay
    stripe_id = act.customers[0]
    cid = await pool.fetchval("SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1", stripe_id)
    await create_meters(sc)
    at = datetime.now(UTC) - timedelta(seconds=5)
    async with pool.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"u-{cid}-{i}", customer_id=cid, meter=m, quantity=Decimal(q),
                                       occurred_at=at)
                            for i, (m, q) in enumerate([("api_requests", 40), ("storage_gb_hours", "2.5")])])
        await conn.execute(
            """INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value)
               SELECT customer_id, meter, $2, $3, sum(quantity) FROM billing.usage_events
                WHERE customer_id = $1 GROUP BY 1, 2""", cid, *billing_period(at.date()))
    sync = await run_reconcile(client, tq, ReconcileUsageInput(customers=[cid], mode=Mode.APPLY, settle_seconds=1,
                                                               actor="pytest"), f"sync-{uuid.uuid4().hex[:8]}")
    assert sync.counts.corrections_pushed == 2, sync.counts
    return {"customer_id": cid, "stripe_id": stripe_id, "subscription": act.subscriptions[0],
            "checkout": next(iter(act.credit_sessions)), "credits": next(iter(act.credit_sessions.values())),
            "today": at.date(), "period_start": billing_period(at.date())[0]}


async def inject_drift(pool, w: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One mismatch per domain (two for usage); returns them as (domain, entity, field)."""
    cid = w["customer_id"]
    await pool.execute("UPDATE billing.customers SET name = 'Old name' WHERE customer_id = $1", cid)
    await pool.execute("UPDATE billing.subscriptions SET status = 'past_due' WHERE stripe_subscription_id = $1",
                       w["subscription"])
    invoice = await pool.fetchval(
        "SELECT stripe_invoice_id FROM billing.invoices WHERE stripe_customer_id = $1 AND status = 'paid' LIMIT 1",
        w["stripe_id"])
    await pool.execute("UPDATE billing.invoices SET status = 'open' WHERE stripe_invoice_id = $1", invoice)
    # The grant of the credit purchase never happened (ledger row, balance and audit row together).
    ledger_id = await pool.fetchval("SELECT id FROM billing.credit_ledger WHERE source = $1", f"checkout:{w['checkout']}")
    await pool.execute("DELETE FROM billing.credit_ledger WHERE id = $1", ledger_id)
    await pool.execute("UPDATE billing.credit_balances SET balance = balance - $2 WHERE customer_id = $1", cid,
                       w["credits"])
    await pool.execute("DELETE FROM billing.audit_log WHERE idempotency_key = $1", f"credit-ledger:{ledger_id}")
    # A corrupted counter, and new usage (counted by the application) never pushed to Stripe.
    await pool.execute("UPDATE billing.usage_counters SET value = value + 5 WHERE customer_id = $1 AND meter = $2",
                       cid, "storage_gb_hours")
    async with pool.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"late-{cid}", customer_id=cid, meter="api_requests",
                                       quantity=Decimal(7), occurred_at=datetime.now(UTC) - timedelta(seconds=2))])
        await conn.execute("UPDATE billing.usage_counters SET value = value + 7 WHERE customer_id = $1 AND meter = $2",
                           cid, "api_requests")
    return sorted([("customer", cid, "name"), ("subscriptions", w["subscription"], "status"), ("invoices", invoice, "status"),
                   ("credits", w["checkout"], "grant"), ("usage", f"storage_gb_hours period {w['period_start']}", "counter"),
                   ("usage", f"api_requests {w['today']}", "stripe")])


def keys(mismatches: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((m["domain"], m["entity"], m["field"]) for m in mismatches)


async def show(cli_env, ref: str) -> dict[str, Any]:
    code, out, err = await cli(cli_env, "customer", "show", ref, "--json")
    assert code == 0, err
    return json.loads(out)


async def repair(cli_env, ref: str, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out, err = await cli(cli_env, "customer", "repair", ref, "--json", *extra)
    assert code in (0, 1), err
    return code, json.loads(out)


async def test_show_names_every_mismatch_and_one_repair_fixes_them_all(
        cli_env, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue, clean_db):
    client, pool = temporal_env.client, clean_db
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        w = await synced_customer(client, task_queue, pool, stripe_client, emulator_admin)
        cid = w["customer_id"]
        clean = await show(cli_env, cid)
        assert clean["mismatches"] == [], clean["mismatches"]
        assert [s["id"] for s in clean["subscriptions"]] == [w["subscription"]]
        assert {m["meter"]: (m["ledger"], m["counter"], m["pushed"], m["stripe"]) for m in clean["usage"]["meters"]} == {
            "api_requests": ("40", "40", "40", "40"), "storage_gb_hours": ("2.5", "2.5", "2.5", "2.5")}
        assert clean["credits"]["purchases"][0]["granted"] == 1 and clean["events"], clean["credits"]

        expected = await inject_drift(pool, w)
        found = await show(cli_env, w["stripe_id"])  # the Stripe id names the same customer
        assert found["customer_id"] == cid
        assert keys(found["mismatches"]) == expected
        by_key = {(m["domain"], m["field"]): m for m in found["mismatches"]}
        assert (by_key[("subscriptions", "status")]["local"], by_key[("subscriptions", "status")]["stripe"]) == (
            "past_due", "active")
        assert (by_key[("invoices", "status")]["local"], by_key[("invoices", "status")]["stripe"]) == ("open", "paid")
        assert (by_key[("usage", "stripe")]["local"], by_key[("usage", "stripe")]["stripe"]) == ("47", "40")
        assert by_key[("usage", "counter")]["local"] == "7.5"
        assert all(a["ui_link"] and "/workflows/" in a["ui_link"] for a in found["audit"] if a["workflow_id"])
        code, out, _ = await cli(cli_env, "customer", "show", cid)  # the tables name them too
        assert code == 0 and "6 mismatches:" in out and "past_due" in out, out

        # Paused: the repair observes, reports what it would fix, and writes nothing.
        before = await written(pool)
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=True, actor="pytest", reason="incident")
        code, paused = await repair(cli_env, cid, "--apply")
        assert code == 0 and paused["paused"] and paused["fixes"] == [], paused
        assert keys(paused["before"]) == expected and keys(paused["after"]) == expected
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=False, actor="pytest", reason="over")
        assert await written(pool) == before

        # Apply: every mismatch fixed in one run, one audit row per fix.
        code, fixed = await repair({**cli_env, "BILLING_CORRELATION_ID": "corr-ticket-9"}, w["stripe_id"], "--apply",
                                   "--actor", "alice", "--reason", "ticket 9")
        assert code == 0, fixed
        assert fixed["workflow_id"] == repair_workflow_id(cid) and not fixed["paused"] and not fixed["failed"]
        assert keys(fixed["before"]) == expected and fixed["after"] == []
        assert sorted(f["action"] for f in fixed["fixes"]) == [
            "credits.grant", "customer.resync", "invoice.resync", "subscription.resync", "usage.push_meter_event",
            "usage.set_counter"]
        assert all(f["actor"] == "alice" and f["workflow_id"].startswith(repair_workflow_id(cid))
                   and f["correlation_id"] == "corr-ticket-9" and f["ui_link"] for f in fixed["fixes"])
        assert {f["reason"] for f in fixed["fixes"] if f["action"].endswith(".resync")} == {"ticket 9"}
        renamed = next(f for f in fixed["fixes"] if f["action"] == "customer.resync")
        assert (renamed["before"], renamed["after"], renamed["workflow_id"]) == (
            {"name": "Old name"}, {"name": found["customer"]["stripe"]["name"]}, repair_workflow_id(cid))
        rows = await pool.fetch("SELECT * FROM billing.audit_log WHERE id > $1 ORDER BY id",
                                max(r["id"] for r in before["audit_log"]))
        assert sorted(r["action"] for r in rows) == sorted(f["action"] for f in fixed["fixes"])
        assert (await show(cli_env, cid))["mismatches"] == []

        # Again: nothing to fix, nothing written.
        after_fix = await written(pool)
        code, again = await repair(cli_env, cid, "--apply")
        assert code == 0 and again["before"] == [] and again["fixes"] == [], again
        # Each execution's child steps are its own runs (their reports are kept apart).
        children = [{s["workflow_id"] for s in r["steps"] if s["step"] != "customer"} for r in (fixed, again)]
        assert len(children[0]) == len(children[1]) == 4 and children[0].isdisjoint(children[1])
        now = await written(pool)
        assert now["audit_log"] == after_fix["audit_log"] and now["stripe_usage_pushes"] == after_fix["stripe_usage_pushes"]
        assert now["credit_ledger"] == after_fix["credit_ledger"]


async def test_bad_unknown_and_concurrent_repairs_are_refused_and_write_nothing(
        cli_env, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue, clean_db):
    client, pool = temporal_env.client, clean_db
    cus = await stripe_client.v1.customers.create_async(params={"name": "x", "metadata": {"customer_id": "acme"}})
    await pool.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('acme', $1)", cus.id)
    before = await written(pool)
    for args, code_wanted, says in [
        (("show", "a b"), 2, "contains spaces"),
        (("show", "cus_$x"), 2, "not a Stripe customer id"),
        (("show", "nobody"), 1, "unknown customer: nobody"),
        (("repair", "cus_$x", "--apply"), 2, "not a Stripe customer id"),
        (("repair", "nobody", "--apply"), 2, "unknown customer: nobody"),
        (("repair", "acme", "--apply", "--dry-run"), 2, "choose one of"),
    ]:
        code, out, err = await cli(cli_env, "customer", *args)
        assert code == code_wanted and says in err and len(err.strip().splitlines()) == 1, (args, code, err)
        assert "Traceback" not in err
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        # A Stripe id neither side knows: the workflow says so, exit 1.
        code, _, err = await cli(cli_env, "customer", "show", "cus_doesnotexist")
        assert code == 1 and "unknown customer: cus_doesnotexist" in err, err
        # A Stripe customer Postgres never heard of: Stripe's side, and the customer missing here.
        stranger = await stripe_client.v1.customers.create_async(params={"name": "stranger"})
        seen = await show(cli_env, stranger.id)
        assert seen["customer_id"] is None and keys(seen["mismatches"]) == [("customer", stranger.id, "exists")]
        assert seen["customer"]["stripe"]["name"] == "stranger" and seen["usage"] is None
        # A repair of acme already running (on a queue no worker polls): a second one is refused.
        held = await client.start_workflow(RepairCustomer.run, RepairCustomerInput(customer="acme"),
                                           id=repair_workflow_id("acme"), task_queue=f"idle-{uuid.uuid4().hex[:8]}")
        try:
            code, _, err = await cli(cli_env, "customer", "repair", cus.id, "--apply")
            assert code == 1 and "a repair of acme is already running: customer-repair-acme" in err, err
        finally:
            await held.terminate("test over")
    assert await written(pool) == before


async def test_worker_killed_mid_repair_fixes_everything_once(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue, clean_db, tmp_path):
    """A real worker process SIGKILLed right after the repair's first fix: a new worker finishes
    the run; every mismatch is fixed, each with exactly one audit row, Stripe got one push."""
    client, pool = temporal_env.client, clean_db
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        w = await synced_customer(client, task_queue, pool, stripe_client, emulator_admin)
    expected = await inject_drift(pool, w)
    high_water = await pool.fetchval("SELECT max(id) FROM billing.audit_log")
    pushes_before = len(await emulator_admin.meter_events())
    env = {**os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
           "TEMPORAL_ADDRESS": temporal_env.address, "TEMPORAL_NAMESPACE": temporal_env.namespace,
           "BILLING_TASK_QUEUE": task_queue, "RECON_SETTLE_SECONDS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "worker.log"
    first, second = spawn_worker(env, log), None
    try:
        handle = await client.start_workflow(
            RepairCustomer.run, RepairCustomerInput(customer=w["customer_id"], mode=Mode.APPLY, actor="alice"),
            id=repair_workflow_id(w["customer_id"]), task_queue=task_queue)
        deadline = time.monotonic() + 60
        while not await pool.fetchval("SELECT count(*) FROM billing.audit_log WHERE id > $1", high_water):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = spawn_worker(env, log)
        result = await asyncio.wait_for(handle.result(), 150)
    finally:
        for p in (first, second):
            if p is not None:
                stop_worker(p)
    assert sorted((m.domain.value, m.entity, m.field) for m in result.before) == expected
    assert result.after == [] and not result.failed, result
    rows = await pool.fetch("SELECT action, entity_id FROM billing.audit_log WHERE id > $1", high_water)
    assert sorted(r["action"] for r in rows) == [
        "credits.grant", "customer.resync", "invoice.resync", "subscription.resync", "usage.push_meter_event",
            "usage.set_counter"]
    assert sorted(f.action for f in result.fixes) == sorted(r["action"] for r in rows)
    pushed = (await emulator_admin.meter_events())[pushes_before:]
    assert [(e["event_name"], str(e["payload"]["value"])) for e in pushed] == [("api_requests", "7")]
