"""RevenueReconciliation through the real stack: the emulator over HTTP via the SDK, a worker,
Postgres, the CLI in a subprocess. After injected drift (a paid invoice missing in the mirror, a
refunded charge, a voided invoice the mirror counts as paid, an invoice paid out of band) the
per-day figures show exactly that drift, a paused apply writes nothing, `--apply` fixes it with
one audit row per fix, and an apply again writes nothing more. Bad input is refused, exit 2,
nothing written."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from autoheal import switch
from common.types import Mode
from revenue.types import RevenueInput
from revenue.workflow import RevenueReconciliation
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker
from tests.integration.webhook_helpers import mirror_invoices, stripe_invoices
from webhooks.types import ReplayResult, ReplayWebhooksInput

pytestmark = pytest.mark.integration

AMOUNTS = {"missing": 1000, "refunded": 2000, "voided": 900, "out_of_band": 700, "untouched": 500}
REFUND = 400
TOMORROW = datetime.now(UTC).date() + timedelta(days=1)


async def _invoice(sc, customer: str, amount: int) -> str:
    inv = (await sc.v1.invoices.create_async(params={"customer": customer, "auto_advance": False})).id
    await sc.v1.invoice_items.create_async(params={"customer": customer, "invoice": inv, "amount": amount})
    await sc.v1.invoices.finalize_invoice_async(inv, params={"auto_advance": False})
    return inv


def _totals(days: list[dict]) -> dict[str, int]:
    keys = ("local_paid", "local_refunded", "stripe_paid", "stripe_refunded", "payments_paid", "out_of_band",
            "balance_net", "drift", "findings")
    return {k: sum(d[k] for d in days) for k in keys}


async def _revenue(cli_env, *args: str) -> tuple[int, dict, str]:
    # Yesterday too: a run never straddles midnight (UTC) in a way the test would notice.
    today = datetime.now(UTC).date()
    code, out, err = await cli(cli_env, "revenue", "--since", str(today - timedelta(days=1)), "--until", str(today),
                               "--json", *args)
    return code, (json.loads(out) if out.strip() else {}), err


async def test_revenue_drift_is_shown_per_day_and_fixed_by_apply(
        cli_env, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue, clean_db,
        tmp_path):
    client, pool, sc = temporal_env.client, clean_db, stripe_client
    tag = uuid.uuid4().hex[:6]
    cus = await sc.v1.customers.create_async(params={"metadata": {"customer_id": f"rev-{tag}"}})
    ids = {name: await _invoice(sc, cus.id, amount) for name, amount in AMOUNTS.items()}
    for name in ("missing", "refunded", "untouched"):
        await sc.v1.invoices.pay_async(ids[name])
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        # The mirror, from Stripe's events (no endpoint: a replay), equal to Stripe.
        res = await client.execute_workflow("ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY),
                                            id=f"replay-{tag}", task_queue=task_queue, result_type=ReplayResult)
        assert res.counts.failed == 0
        assert await mirror_invoices(pool, [cus.id]) == await stripe_invoices(sc, cus.id)

        # The drift: no webhook arrives for any of it.
        await pool.execute("DELETE FROM billing.invoices WHERE stripe_invoice_id = $1", ids["missing"])
        payment = (await sc.v1.invoice_payments.list_async(params={"invoice": ids["refunded"]})).data[0]
        await sc.v1.refunds.create_async(params={"charge": payment.payment.charge, "amount": REFUND})
        await sc.v1.invoices.void_invoice_async(ids["voided"])
        await pool.execute(
            "UPDATE billing.invoices SET status = 'paid', amount_paid = amount_due, amount_remaining = 0, "
            "paid_at = now() WHERE stripe_invoice_id = $1", ids["voided"])
        await sc.v1.invoices.pay_async(ids["out_of_band"], params={"paid_out_of_band": True})
        before = [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices ORDER BY 1")]

        export = tmp_path / "findings.csv"
        code, dry, err = await _revenue(cli_env, "--export", str(export))
        assert code == 0, err
        a = AMOUNTS
        assert _totals(dry["days"]) == {
            "local_paid": a["refunded"] + a["voided"] + a["untouched"], "local_refunded": 0,
            "stripe_paid": a["missing"] + a["refunded"] + a["out_of_band"] + a["untouched"],
            "stripe_refunded": REFUND,
            "payments_paid": a["missing"] + a["refunded"] + a["untouched"], "out_of_band": a["out_of_band"],
            "balance_net": a["missing"] + a["refunded"] + a["untouched"] - REFUND,
            "drift": a["voided"] - a["missing"] - a["out_of_band"] + REFUND, "findings": 6}
        found = {(f["stripe_invoice_id"], f["kind"]) for f in dry["findings"]}
        assert found == {(ids["missing"], "missing_locally"), (ids["refunded"], "amount_differs"),
                         (ids["voided"], "status_differs"), (ids["voided"], "amount_differs"),
                         (ids["out_of_band"], "status_differs"), (ids["out_of_band"], "amount_differs")}
        assert {f["status"] for f in dry["findings"]} == {"observed"}
        assert dry["counts"]["by_kind"] == {"missing_locally": 1, "amount_differs": 3, "status_differs": 2}
        with export.open() as fh:
            assert {(r["stripe_invoice_id"], r["kind"]) for r in csv.DictReader(fh)} == found
        assert [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices ORDER BY 1")] == before
        assert await pool.fetchval("SELECT count(*) FROM billing.audit_log") == 0

        # The table, as an operator sees it.
        code, out, err = await cli(cli_env, "revenue", "--since", dry["since"], "--until", dry["until"])
        assert code == 0, err
        assert "missing_locally" in out and ids["out_of_band"] in out and str(dry["days"][-1]["day"]) in out

        # Paused: observe-only.
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=True, actor="test", reason="incident")
        code, paused, _ = await _revenue(cli_env, "--apply")
        assert code == 0 and paused["paused"] and paused["counts"]["findings"] == 6
        assert [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices ORDER BY 1")] == before
        assert await pool.fetchval("SELECT count(*) FROM billing.invoice_refunds") == 0
        assert await pool.fetchval(
            "SELECT observe_only FROM billing.reconciliation_runs WHERE run_id = $1", paused["run_id"])
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=False, actor="test", reason="over")

        code, applied, err = await _revenue(cli_env, "--apply", "--actor", "alice", "--reason", "weekly")
        assert code == 0, err
        c = applied["counts"]
        assert (c["findings"], c["fixed"], c["refunds_recorded"], c["fix_failures"]) == (6, 4, 1, 0), c
        assert {f["status"] for f in applied["findings"]} == {"applied"}
        assert await mirror_invoices(pool, [cus.id]) == await stripe_invoices(sc, cus.id)
        refunds = [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoice_refunds")]
        assert [(r["stripe_invoice_id"], r["amount"]) for r in refunds] == [(ids["refunded"], REFUND)]
        audit = {(r["action"], r["entity_id"]): r for r in await pool.fetch("SELECT * FROM billing.audit_log")}
        assert set(audit) == {("revenue.invoice_resync", ids["missing"]), ("revenue.invoice_resync", ids["voided"]),
                              ("revenue.invoice_resync", ids["out_of_band"]),
                              ("revenue.record_refund", ids["refunded"])}
        assert {(r["actor"], r["reason"], r["customer_id"]) for r in audit.values()} == {
            ("alice", "weekly", f"rev-{tag}")}
        assert audit[("revenue.invoice_resync", ids["voided"])]["after"]["status"] == "void"

        # Again: no drift, nothing written.
        code, again, _ = await _revenue(cli_env, "--apply")
        assert code == 0 and again["counts"]["findings"] == 0 and again["findings"] == []
        assert _totals(again["days"])["drift"] == 0
        assert await pool.fetchval("SELECT count(*) FROM billing.audit_log") == 4
        assert await pool.fetchval("SELECT count(*) FROM billing.invoice_refunds") == 1
        # Durable: every run's row (kind revenue) and its findings stay for the reports.
        assert await pool.fetchval(
            "SELECT count(*) FROM billing.reconciliation_runs WHERE kind = 'revenue' AND status = 'completed'") == 5
        assert await pool.fetchval("SELECT count(*) FROM billing.revenue_stripe_objects") == 0  # scratch gone


@pytest.mark.parametrize("args, says", [
    (("--since", "2026-11-10", "--until", "2026-11-01"), "after until"),
    (("--since", "2026-01-01", "--until", "2026-06-30"), "at most 92"),
    (("--since", "2026-11-01"), "give both"),
    (("--since", "2026-13-01", "--until", "2026-11-01"), "not a day"),
    (("--since", str(TOMORROW), "--until", str(TOMORROW)), "in the future"),
    (("--dry-run", "--apply"), "choose one"),
])
async def test_bad_input_is_refused_and_nothing_is_written(cli_env, clean_db, args, says):
    code, out, err = await cli(cli_env, "revenue", *args)
    assert code == 2 and says in err and "Traceback" not in err, err
    assert await clean_db.fetchval("SELECT count(*) FROM billing.reconciliation_runs") == 0


async def test_the_workflow_refuses_a_range_in_the_future_before_writing(
        temporal_env, postgres_dsn, emulator, task_queue, clean_db):
    """The same refusal for a start that does not go through the CLI (`temporal workflow start`)."""
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        with pytest.raises(WorkflowFailureError) as e:
            await client.execute_workflow(
                RevenueReconciliation.run, RevenueInput(since=TOMORROW, until=TOMORROW, mode=Mode.APPLY),
                id=f"revenue-future-{uuid.uuid4().hex[:6]}", task_queue=task_queue)
    assert isinstance(e.value.cause, ApplicationError) and e.value.cause.type == "InvalidWindow"
    assert await clean_db.fetchval("SELECT count(*) FROM billing.reconciliation_runs") == 0


async def test_a_retried_day_writes_each_fix_once_and_keeps_what_it_first_saw(
        postgres_dsn, emulator, stripe_client, clean_db):
    """The worker dies after `compare_day` committed its fixes but before it reported: the retry
    (from the start, or from the last heartbeat) finds the mirror fixed and writes nothing more:
    one mirror write and one refund row, each with one audit row. The day's figures stay those
    first seen (the drift), not the fixed state. Listing pages run twice (a retried page) save
    the same scratch rows."""
    import dataclasses
    from typing import Any

    from temporalio.testing import ActivityEnvironment

    from billing.stripe_gateway import StripeGateway, make_stripe_client
    from common.paged import PagedRunContext, RunScope
    from revenue.activities import RevenueActivities
    from revenue.types import LISTED_KIND, DayInput, ListPageInput, RunInput, day_bounds

    sc = stripe_client
    cus = await sc.v1.customers.create_async(params={"metadata": {"customer_id": "rev-retry"}})
    inv = await _invoice(sc, cus.id, 1500)
    await sc.v1.invoices.pay_async(inv)
    payment = (await sc.v1.invoice_payments.list_async(params={"invoice": inv})).data[0]
    await sc.v1.refunds.create_async(params={"charge": payment.payment.charge, "amount": 500})
    acts = RevenueActivities(clean_db, StripeGateway(make_stripe_client(make_settings(postgres_dsn, emulator)), None))
    today = datetime.now(UTC).date()
    ctx = PagedRunContext(run_id="revenue-retry", workflow_run_id="r1", scope=RunScope(), mode=Mode.APPLY,
                          actor="test", reason="test")
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    await env.run(acts.start_run, RunInput(context=ctx, since=today, until=today))
    start, end = day_bounds(today)
    for listing in LISTED_KIND:
        for _ in range(2):  # a retried page
            page = ListPageInput(context=ctx, listing=listing, created_gte=int(start.timestamp()),
                                 created_lt=int(end.timestamp()), page_size=100, max_pages=10)
            assert (await env.run(acts.list_page, page)).next_cursor is None
    assert await clean_db.fetchval("SELECT count(*) FROM billing.revenue_stripe_objects") == 5  # inv, pay, re, 2 txn

    day = DayInput(context=ctx, day=today, since=today, until=today)
    first = await env.run(acts.compare_day, day)
    first_last_beat = beats[-1]
    assert (first.counts.fixed, first.counts.refunds_recorded, first.counts.findings) == (1, 1, 1)
    days_first = [dict(r) for r in await clean_db.fetch("SELECT * FROM billing.revenue_days")]
    assert [(d["local_paid"], d["stripe_paid"], d["stripe_refunded"], d["drift"]) for d in days_first] == [
        (0, 1500, 500, -1000)]
    # Retried from the start: the finding (applied) still counts; nothing is written again.
    env.info = dataclasses.replace(env.info, heartbeat_details=[])
    retry = await env.run(acts.compare_day, day)
    assert (retry.counts.findings, retry.counts.fixed, retry.counts.refunds_recorded) == (1, 1, 0)
    # From its last heartbeat: the counts it had, nothing compared again.
    env.info = dataclasses.replace(env.info, heartbeat_details=[first_last_beat])
    assert await env.run(acts.compare_day, day) == first
    assert await clean_db.fetchval("SELECT count(*) FROM billing.invoice_refunds") == 1
    assert sorted(r["action"] for r in await clean_db.fetch("SELECT action FROM billing.audit_log")) == [
        "revenue.invoice_resync", "revenue.record_refund"]
    assert [dict(r) for r in await clean_db.fetch("SELECT * FROM billing.revenue_days")] == days_first
    assert await clean_db.fetchval("SELECT status FROM billing.revenue_findings") == "applied"


async def test_an_invoice_stripe_does_not_have_is_reported_never_deleted(
        cli_env, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue, clean_db):
    """A mirror row counted as paid today that Stripe does not know: `missing_in_stripe`,
    unfixable; an apply leaves it as it is, writes nothing and exits 1 (found what it cannot fix)."""
    pool = clean_db
    cus = await stripe_client.v1.customers.create_async(params={"metadata": {"customer_id": "rev-ghost"}})
    await pool.execute(
        """INSERT INTO billing.invoices (stripe_invoice_id, stripe_customer_id, status, currency, amount_due,
                                         amount_paid, paid_at, stripe_created)
           VALUES ('in_ghost', $1, 'paid', 'usd', 300, 300, now(), now())""", cus.id)
    before = [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices")]
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, dry, err = await _revenue(cli_env)
        assert code == 0, err
        assert [(f["stripe_invoice_id"], f["kind"], f["status"]) for f in dry["findings"]] == [
            ("in_ghost", "missing_in_stripe", "unfixable")]
        assert _totals(dry["days"])["drift"] == 300
        code, applied, _ = await _revenue(cli_env, "--apply")
        assert code == 1 and applied["counts"]["unfixable"] == 1 and applied["counts"]["fixed"] == 0
    assert [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices")] == before
    assert await pool.fetchval("SELECT count(*) FROM billing.audit_log") == 0
