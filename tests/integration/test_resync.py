"""ResyncSubscriptions, RepairCredits and AdjustCredits against the real parts: the dev server, a
worker, Postgres and the Stripe emulator driven through the official SDK.

Postgres is first made equal to Stripe the way production does it (the webhook handlers, through
ReplayWebhooks), then drift is injected in Postgres and must be found exactly, fixed exactly by
apply with one audit row per fix, and a second apply must change nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError

from autoheal import switch
from billing.ingest import UsageEvent, ingest
from billing.periods import billing_period
from common.types import Mode
from credits.types import AdjustCreditsInput, AdjustCreditsResult, RepairCreditsInput, RepairResult
from resync.types import ResyncResult, ResyncSubscriptionsInput
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker
from tests.integration.webhook_helpers import (
    Activity,
    billing_scenario,
    postgres_state,
    stripe_state,
)
from webhooks.types import ReplayResult, ReplayWebhooksInput

pytestmark = pytest.mark.integration

TABLES = ("subscriptions", "customers", "invoices", "credit_ledger", "credit_balances", "audit_log")


async def run(client, task_queue: str, workflow: str, inp: Any, result_type: type, prefix: str) -> Any:
    return await client.execute_workflow(workflow, inp, id=f"{prefix}-{uuid.uuid4().hex[:10]}",
                                         task_queue=task_queue, result_type=result_type)


async def resync(client, tq, **kw) -> ResyncResult:
    return await run(client, tq, "ResyncSubscriptions", ResyncSubscriptionsInput(**kw), ResyncResult, "resync")


async def repair(client, tq, **kw) -> RepairResult:
    return await run(client, tq, "RepairCredits", RepairCreditsInput(**kw), RepairResult, "repair")


async def snapshot(pool) -> dict[str, list[dict[str, Any]]]:
    return {t: [dict(r) for r in await pool.fetch(f"SELECT * FROM billing.{t} ORDER BY 1")] for t in TABLES}


async def audit_count(pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM billing.audit_log")


async def synced_world(client, tq, pool, stripe_client, admin) -> tuple[Activity, list[str]]:
    """The webhook scenario (4 customers: active, past_due, canceled, past_due; one credit purchase
    each), mirrored into Postgres by the webhook handlers (ReplayWebhooks over Stripe's events)."""
    act = await billing_scenario(stripe_client, admin, n_customers=4)
    res = await run(client, tq, "ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY), ReplayResult, "replay")
    assert res.counts.failed == 0, res
    assert await postgres_state(pool, act) == await stripe_state(stripe_client, act)
    ids = [await pool.fetchval("SELECT customer_id FROM billing.customers WHERE stripe_customer_id = $1", c)
           for c in act.customers]
    return act, ids


async def inject_drift(pool, act: Activity, ids: list[str]) -> dict[str, Any]:
    s0, s1, s2, _ = act.subscriptions
    cs = list(act.credit_sessions)
    await pool.execute("UPDATE billing.subscriptions SET status = 'unpaid' WHERE stripe_subscription_id = $1", s0)
    await pool.execute("""UPDATE billing.subscriptions SET current_period_end = current_period_end - interval '30 days'
                          WHERE stripe_subscription_id = $1""", s1)
    await pool.execute("DELETE FROM billing.subscriptions WHERE stripe_subscription_id = $1", s2)
    await pool.execute(
        """INSERT INTO billing.subscriptions (stripe_subscription_id, stripe_customer_id, customer_id, status)
           VALUES ('sub_ghost', $1, $2, 'trialing')""", act.customers[0], ids[0])
    # Lost grant: the webhook's grant never happened (ledger row, balance and audit row together).
    lost = act.credit_sessions[cs[0]]
    ledger_id = await pool.fetchval("SELECT id FROM billing.credit_ledger WHERE source = $1", f"checkout:{cs[0]}")
    await pool.execute("DELETE FROM billing.credit_ledger WHERE id = $1", ledger_id)
    await pool.execute("UPDATE billing.credit_balances SET balance = balance - $2 WHERE customer_id = $1", ids[0], lost)
    assert await pool.execute("DELETE FROM billing.audit_log WHERE idempotency_key = $1",
                              f"credit-ledger:{ledger_id}") == "DELETE 1"
    # Double grant: another system granted the same checkout again under another source.
    await pool.execute(
        """INSERT INTO billing.credit_ledger (customer_id, amount, source, reason, checkout_session_id)
           VALUES ($1, $2, $3, 'legacy import', $4)""", ids[1], act.credit_sessions[cs[1]], f"legacy:{cs[1]}", cs[1])
    await pool.execute("UPDATE billing.credit_balances SET balance = balance + $2 WHERE customer_id = $1",
                       ids[1], act.credit_sessions[cs[1]])
    # Balance off by N.
    await pool.execute("UPDATE billing.credit_balances SET balance = balance + 7 WHERE customer_id = $1", ids[2])
    # A paid invoice the mirror lost, and usage of a closed billing period never pushed.
    lost_invoice = await pool.fetchval(
        "SELECT stripe_invoice_id FROM billing.invoices WHERE status = 'paid' ORDER BY 1 LIMIT 1")
    await pool.execute("DELETE FROM billing.invoices WHERE stripe_invoice_id = $1", lost_invoice)
    last_period_start, _ = billing_period(billing_period(datetime.now(UTC).date())[0] - timedelta(days=1))
    async with pool.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"old-{uuid.uuid4().hex[:8]}", customer_id=ids[3], meter="api_requests",
                                       quantity=Decimal(5),
                                       occurred_at=datetime.combine(last_period_start, datetime.min.time(), tzinfo=UTC)
                                       + timedelta(hours=3))])
    return {"lost_invoice": lost_invoice, "ghost": "sub_ghost"}


def assert_found(sub: ResyncResult, cred: RepairResult, act: Activity, drift: dict[str, Any]) -> None:
    s0, s1, s2, _ = act.subscriptions
    cs = list(act.credit_sessions)
    c = sub.counts
    assert (c.compared, c.matched, c.mismatched) == (3, 1, 2), c
    assert c.fields == {"status": 1, "current_period_end": 1}, c
    assert (c.missing_local, c.missing_in_stripe) == (1, 1), c
    assert sorted(sub.findings.mismatched) == sorted([f"{s0}: status", f"{s1}: current_period_end"])
    assert sub.findings.missing_local == [s2] and sub.findings.missing_in_stripe == [drift["ghost"]]
    assert (sub.count_check.active_local_before, sub.count_check.active_stripe) == (0, 1)
    k = cred.counts
    assert (k.purchases, k.granted_ok, k.missing_grants, k.duplicate_grants) == (4, 3, 1, 1), k
    assert (k.customers_checked, k.balance_mismatches, k.negative_ledger, k.invalid_checkouts) == (4, 1, 0, 0), k
    assert cred.findings.missing_grants == [cs[0]]
    assert cred.findings.duplicate_grants == [f"{cs[1]}: 2 rows (checkout:{cs[1]}, legacy:{cs[1]})"]
    assert cred.checks.paid_invoices_missing_locally == 1 and cred.checks.invoice_sample == [drift["lost_invoice"]]
    assert cred.checks.unpushed_usage_keys == 1, cred.checks


async def test_drift_is_found_exactly_fixed_exactly_once_and_not_while_paused(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue, clean_db):
    client, pool = temporal_env.client, clean_db
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        act, ids = await synced_world(client, task_queue, pool, stripe_client, emulator_admin)
        drift = await inject_drift(pool, act, ids)
        before = await snapshot(pool)

        # Dry-run: every finding, exactly; nothing written.
        sub = await resync(client, task_queue)
        cred = await repair(client, task_queue)
        assert_found(sub, cred, act, drift)
        assert (sub.counts.fixed, sub.counts.created, cred.counts.grants_made, cred.counts.balances_repaired) == (0,) * 4
        assert cred.checks.checkouts_without_ledger_entry == 1
        assert not sub.paused and not cred.paused
        assert await snapshot(pool) == before
        assert await pool.fetchval("SELECT count(*) FROM billing.run_seen") == 0  # scratch rows cleaned

        # Paused: an apply run observes and reports the same, and writes nothing.
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=True, actor="test", reason="incident")
        sub = await resync(client, task_queue, mode=Mode.APPLY)
        cred = await repair(client, task_queue, mode=Mode.APPLY)
        assert sub.paused and cred.paused
        assert_found(sub, cred, act, drift)
        assert (sub.counts.fixed, sub.counts.created, cred.counts.grants_made, cred.counts.balances_repaired) == (0,) * 4
        assert await snapshot(pool) == before
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=False, actor="test", reason="over")

        # Apply: fixed exactly, one audit row per fix.
        audits = await audit_count(pool)
        sub = await resync(client, task_queue, mode=Mode.APPLY, actor="alice", reason="ticket 7")
        cred = await repair(client, task_queue, mode=Mode.APPLY, actor="alice")
        assert_found(sub, cred, act, drift)
        assert (sub.counts.fixed, sub.counts.created, sub.counts.fix_failures) == (2, 1, 0)
        assert sub.count_check.active_local_after == sub.count_check.active_stripe == 1 and sub.count_check.matches
        assert (cred.counts.grants_made, cred.counts.balances_repaired) == (1, 1)
        assert cred.checks.checkouts_without_ledger_entry == 0
        rows = await pool.fetch("SELECT * FROM billing.audit_log ORDER BY id OFFSET $1", audits)
        assert len(rows) == 5
        by_action: dict[str, list[Any]] = {}
        for r in rows:
            by_action.setdefault(r["action"], []).append(r)
            assert r["actor"] == "alice" and r["workflow_id"] in (sub.run_id, cred.run_id) and r["run_id"]
        assert sorted((a, len(v)) for a, v in by_action.items()) == [
            ("credits.balance_repair", 1), ("credits.grant", 1), ("subscription.create", 1),
            ("subscription.resync", 2)]
        s0 = act.subscriptions[0]
        status_fix = next(r for r in by_action["subscription.resync"] if r["entity_id"] == s0)
        assert status_fix["before"] == {"status": "unpaid"} and status_fix["after"] == {"status": "active"}
        assert status_fix["reason"] == "ticket 7"
        repair_row = by_action["credits.balance_repair"][0]
        assert repair_row["entity_id"] == ids[2]
        assert repair_row["after"]["balance"] == repair_row["before"]["balance"] - 7
        # Postgres equals Stripe again; the ghost is reported, never deleted; balances = ledger.
        pg, st = await postgres_state(pool, act), await stripe_state(stripe_client, act)
        assert pg["subscriptions"] == st["subscriptions"]
        assert await pool.fetchval("SELECT count(*) FROM billing.subscriptions WHERE stripe_subscription_id = 'sub_ghost'") == 1
        assert await pool.fetchval(
            """SELECT count(*) FROM billing.customers c LEFT JOIN billing.credit_balances b USING (customer_id)
               WHERE coalesce(b.balance, 0) <> coalesce((SELECT sum(amount) FROM billing.credit_ledger l
                                                        WHERE l.customer_id = c.customer_id), 0)""") == 0

        # A second apply changes nothing: zero fixes, no new audit rows.
        after_first = await snapshot(pool)
        sub = await resync(client, task_queue, mode=Mode.APPLY)
        cred = await repair(client, task_queue, mode=Mode.APPLY)
        assert (sub.counts.mismatched, sub.counts.fixed, sub.counts.created, sub.counts.missing_local) == (0, 0, 0, 0)
        assert sub.counts.matched == sub.counts.compared == 4 and sub.counts.missing_in_stripe == 1
        assert (cred.counts.missing_grants, cred.counts.grants_made, cred.counts.balance_mismatches) == (0, 0, 0)
        assert cred.counts.duplicate_grants == 1  # reported, never removed
        assert await snapshot(pool) == after_first


async def test_scoped_resync_and_unknown_customer(temporal_env, postgres_dsn, emulator, emulator_admin,
                                                  stripe_client, task_queue, clean_db):
    client, pool = temporal_env.client, clean_db
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        act, ids = await synced_world(client, task_queue, pool, stripe_client, emulator_admin)
        await pool.execute("UPDATE billing.subscriptions SET status = 'unpaid' WHERE stripe_subscription_id = ANY($1)",
                           act.subscriptions[:2])
        # Manual sync of one customer while auto-healing is paused: an operator's act proceeds.
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=True, actor="test", reason="incident")
        res = await resync(client, task_queue, customer=ids[1], mode=Mode.APPLY, manual=True, actor="bob",
                           reason="customer called")
        assert not res.paused and res.customer == ids[1]
        assert (res.counts.compared, res.counts.fixed, res.counts.fields) == (1, 1, {"status": 1})
        statuses = {r["stripe_subscription_id"]: r["status"] for r in await pool.fetch(
            "SELECT stripe_subscription_id, status FROM billing.subscriptions")}
        assert statuses[act.subscriptions[0]] == "unpaid"  # other customers untouched
        assert statuses[act.subscriptions[1]] != "unpaid"
        row = await pool.fetchrow("SELECT * FROM billing.audit_log WHERE action = 'subscription.resync'")
        assert (row["actor"], row["reason"], row["entity_id"]) == ("bob", "customer called", act.subscriptions[1])

        with pytest.raises(WorkflowFailureError) as info:
            await resync(client, task_queue, customer="nobody")
        assert info.value.cause.message == "unknown customer: nobody"  # type: ignore[attr-defined]
        assert info.value.cause.type == "UnknownCustomer"  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="plan"):
            ResyncSubscriptionsInput(mode=Mode.PLAN)


async def test_adjust_credits_audited_and_negative_refused(cli_env, temporal_env, postgres_dsn, emulator,  # noqa: F811
                                                           task_queue, clean_db):
    client, pool = temporal_env.client, clean_db
    await pool.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('acme', 'cus_acme')")
    async with pool.acquire() as conn:  # manual adjustments proceed while auto-healing is paused
        await switch.set_paused(conn, paused=True, actor="test", reason="incident")
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        wid = f"adjust-{uuid.uuid4().hex[:8]}"
        res = await client.execute_workflow(
            "AdjustCredits", AdjustCreditsInput(customer="acme", amount=300, reason="goodwill", actor="alice"),
            id=wid, task_queue=task_queue, result_type=AdjustCreditsResult)
        assert (res.balance_before, res.balance_after, res.source) == (0, 300, f"manual:{wid}")
        ledger = await pool.fetchrow("SELECT * FROM billing.credit_ledger WHERE source = $1", f"manual:{wid}")
        assert (ledger["amount"], ledger["actor"], ledger["reason"]) == (300, "alice", "goodwill")
        row = await pool.fetchrow("SELECT * FROM billing.audit_log WHERE workflow_id = $1", wid)
        assert (row["actor"], row["reason"], row["action"]) == ("alice", "goodwill", "credits.adjust")
        assert row["before"] == {"balance": 0} and row["after"]["balance"] == 300 and row["run_id"]
        # The workflow's history names actor and reason too (its input).
        history = await client.get_workflow_handle(wid).fetch_history()
        assert b"goodwill" in history.events[0].workflow_execution_started_event_attributes.input.payloads[0].data

        before = await snapshot(pool)
        with pytest.raises(WorkflowFailureError) as info:
            await client.execute_workflow(
                "AdjustCredits", AdjustCreditsInput(customer="acme", amount=-301, reason="chargeback", actor="alice"),
                id=f"adjust-{uuid.uuid4().hex[:8]}", task_queue=task_queue, result_type=AdjustCreditsResult)
        assert info.value.cause.type == "NegativeBalance"  # type: ignore[attr-defined]
        assert "would make the credit balance -1" in info.value.cause.message  # type: ignore[attr-defined]
        assert await snapshot(pool) == before

        # The CLI: refused debit exits 1 and writes nothing; bad arguments exit 2.
        code, out, err = await cli(cli_env, "credits", "adjust", "--customer", "acme", "--amount", "-500",
                                   "--reason", "chargeback", "--actor", "alice", "--json")
        assert code == 1 and "cannot be negative" in out, (out, err)
        assert await snapshot(pool) == before
        code, _, err = await cli(cli_env, "credits", "adjust", "--customer", "acme", "--amount", "0", "--reason", "x")
        assert code == 2 and "amount must not be 0" in err
        code, _, err = await cli(cli_env, "credits", "adjust", "--customer", "nobody", "--amount", "5", "--reason", "x")
        assert code == 2 and "unknown customer: nobody" in err
        code, out, err = await cli(cli_env, "credits", "adjust", "--customer", "acme", "--amount", "-100",
                                   "--reason", "usage", "--actor", "carol", "--json")
        assert code == 0, err
        assert await pool.fetchval("SELECT balance FROM billing.credit_balances WHERE customer_id = 'acme'") == 200


async def test_negative_ledger_is_refused_and_cli_exit_codes(cli_env, temporal_env, postgres_dsn, emulator,  # noqa: F811
                                                             emulator_admin, task_queue, clean_db):
    client, pool = temporal_env.client, clean_db
    await pool.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('neg', 'cus_neg')")
    await pool.execute("INSERT INTO billing.credit_balances (customer_id, balance) VALUES ('neg', 10)")
    await pool.execute("""INSERT INTO billing.credit_ledger (customer_id, amount, source, reason)
                          VALUES ('neg', 10, 'seed:1', 'seed'), ('neg', -25, 'legacy:debit', 'hand-written SQL')""")
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        dry = await repair(client, task_queue)
        assert (dry.counts.balance_mismatches, dry.counts.negative_ledger) == (1, 1)
        assert dry.findings.balance_mismatches == ["neg: balance 10, ledger -15"]
        before = await snapshot(pool)
        # Refused, not failed: the customer is left untouched and the run says so.
        applied = await repair(client, task_queue, mode=Mode.APPLY)
        assert (applied.counts.refused_customers, applied.counts.balances_repaired) == (1, 0)
        assert applied.findings.refused == ["neg: balance 10 not repaired: the ledger sums to -15, below zero "
                                            "(CHECK balance >= 0); nothing written for this customer"]
        assert await snapshot(pool) == before

        code, out, err = await cli(cli_env, "repair-credits", "--customer", "neg", "--json")
        assert code == 0, err
        assert json.loads(out)["counts"]["negative_ledger"] == 1
        code, out, err = await cli(cli_env, "repair-credits", "--customer", "neg", "--apply", "--json")
        assert code == 1 and json.loads(out)["counts"]["refused_customers"] == 1
        code, _, err = await cli(cli_env, "repair-credits", "--customer", "neg", "--apply")
        assert code == 1 and "refused: neg: balance 10 not repaired" in err
        code, out, err = await cli(cli_env, "resync-subscriptions", "--customer", "nobody", "--json")
        assert code == 2 and json.loads(out)["error"] == "unknown customer: nobody"
        code, _, err = await cli(cli_env, "resync-subscriptions", "--dry-run", "--apply")
        assert code == 2 and "choose one of" in err
        code, out, err = await cli(cli_env, "resync-subscriptions")
        assert code == 0 and "active subscriptions: here 0 -> 0, Stripe 0 (match)" in out, err
        code, _, err = await cli(cli_env, "subscriptions", "sync", "--customer", "nobody")
        assert code == 2 and "unknown customer: nobody" in err


async def test_page_activity_resumes_from_its_heartbeat(postgres_dsn, emulator, stripe_client, clean_db):
    """A retried page activity (worker killed after a heartbeat) continues from Stripe's cursor
    with the counts it had: no page is compared twice, none is skipped."""
    import dataclasses

    from temporalio.testing import ActivityEnvironment

    from billing.stripe_gateway import StripeGateway, make_stripe_client
    from common.paged import PagedRunContext, RunScope
    from resync.activities import ResyncActivities
    from resync.types import ResyncPageInput
    from webhooks.activities import StripeEventActivities

    cus = await stripe_client.v1.customers.create_async(params={"name": "resume"})
    product = await stripe_client.v1.products.create_async(params={"name": "resume"})
    price = await stripe_client.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 100, "recurring": {"interval": "month"}})
    subs = [(await stripe_client.v1.subscriptions.create_async(
        params={"customer": cus.id, "items": [{"price": price.id}]})).id for _ in range(3)]
    gateway = StripeGateway(make_stripe_client(make_settings(postgres_dsn, emulator)), None)
    acts = ResyncActivities(clean_db, gateway, StripeEventActivities(clean_db, gateway))
    ctx = PagedRunContext(run_id="resume-test", workflow_run_id="r1", scope=RunScope(), mode=Mode.DRY_RUN,
                     actor="test", reason="test")
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    first = await env.run(acts.subscriptions_page, ResyncPageInput(context=ctx, page_size=1, max_pages=1))
    assert first.next_cursor == subs[-1] and first.counts.missing_local == 1  # newest first
    env.info = dataclasses.replace(env.info, heartbeat_details=[beats[-1]])
    resumed = await env.run(acts.subscriptions_page, ResyncPageInput(context=ctx, page_size=1, max_pages=5))
    assert resumed.next_cursor is None and resumed.pages == 3
    assert resumed.counts.missing_local == 3 and sorted(resumed.findings.missing_local) == sorted(subs)


async def test_balance_page_resumes_from_its_heartbeat(clean_db):
    """A retried balances page checks only the customers after its checkpoint, with the counts
    it had, and still reports a full page (so the workflow asks for the next one)."""
    import dataclasses

    from temporalio.testing import ActivityEnvironment

    from common.paged import PagedRunContext, RunScope
    from credits.checks import LedgerCheckActivities
    from credits.types import BalancePageInput

    for cid in ("bal-a", "bal-b", "bal-c"):
        await clean_db.execute("INSERT INTO billing.customers (customer_id) VALUES ($1)", cid)
        await clean_db.execute("INSERT INTO billing.credit_balances (customer_id, balance) VALUES ($1, 5)", cid)
    acts = LedgerCheckActivities(clean_db, None)  # type: ignore[arg-type]  # no Stripe call here
    ctx = PagedRunContext(run_id="balances-resume", workflow_run_id="r1", scope=RunScope(), mode=Mode.DRY_RUN,
                          actor="test", reason="test")
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    full = await env.run(acts.balances_page, BalancePageInput(context=ctx, limit=2))
    assert (full.next_cursor, full.counts.customers_checked, full.counts.balance_mismatches) == ("bal-b", 2, 2)

    after_first = next(b for b in beats if b["cursor"] == "bal-a")
    # Changed since it was checked: a resumed page does not look at it again.
    await clean_db.execute("UPDATE billing.credit_balances SET balance = 0 WHERE customer_id = 'bal-a'")
    env.info = dataclasses.replace(env.info, heartbeat_details=[after_first])
    resumed = await env.run(acts.balances_page, BalancePageInput(context=ctx, limit=2))
    assert resumed == full
