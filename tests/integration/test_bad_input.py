"""Bad input the other test files did not cover yet (the full table is in docs/RELIABILITY.md):
each gets a precise message, a non-zero exit code or a 4xx, and writes nothing it should not.
The CLI's errors are one line on stderr whatever the terminal width (these run at 40 columns)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.cli_helpers import cli
from tests.integration.ingest_helpers import event, run_ingest, stored, write_jsonl
from tests.integration.recon_helpers import make_settings, running_worker, seed_world
from tests.integration.webhook_helpers import wait_until_settled, webhook_stack

pytestmark = pytest.mark.integration

NARROW = {"COLUMNS": "40"}  # a narrow terminal: no error may be folded at its width


# ---------------------------------------------------------------------------- ingest


def run_ingest_skip(postgres_dsn, path):
    import os
    import subprocess

    from tests.integration.ingest_helpers import CLI

    env = {**os.environ, "DATABASE_URL": postgres_dsn, **NARROW, "NO_COLOR": "1"}
    return subprocess.run([CLI, "ingest", "--skip-invalid", str(path)], env=env, capture_output=True, text=True,
                          timeout=120)


async def test_skip_invalid_keeps_valid_jsonl_lines_and_reports_the_others_by_number(db, postgres_dsn, tmp_path):  # noqa: F811
    p = write_jsonl(tmp_path / "u.jsonl", [
        event("r1"),
        "{broken",
        event("r3", at="2026-11-01T12:00:00"),  # naive timestamp
        event("r4", customer="ghost"),  # unknown customer
        event("r5", quantity="NaN"),
        event("r6", "globex"),
    ])
    res = run_ingest_skip(postgres_dsn, p)
    lines = res.stderr.splitlines()
    assert res.returncode == 1, res
    for n in (2, 3, 4, 5):
        assert any(line.startswith(f"  line {n}:") for line in lines), (n, res.stderr)
    assert "  line 4: unknown customer ghost" in lines
    assert lines[-1] == f"error: 4 invalid line(s) in {p} skipped; the 2 valid line(s) were written", res.stderr
    assert set(await stored(db)) == {"r1", "r6"}
    # Running it again changes nothing (idempotent by request_id) and says the same.
    again = run_ingest_skip(postgres_dsn, p)
    assert again.returncode == 1 and set(await stored(db)) == {"r1", "r6"}


async def test_skip_invalid_csv_reports_file_line_numbers(db, postgres_dsn, tmp_path):  # noqa: F811
    p = tmp_path / "u.csv"
    p.write_text(
        "request_id,customer_id,meter,quantity,occurred_at\n"
        "c1,acme,api_requests,1,2026-11-01T00:00:00Z\n"
        "c2,acme,api_requests,abc,2026-11-01T00:00:00Z\n"
        "c3,acme,api_requests,1,2026-11-01T00:00:00Z,extra\n"
        "c4,globex,api_requests,2,2026-11-01T00:00:00Z\n")
    res = run_ingest_skip(postgres_dsn, p)
    assert res.returncode == 1
    assert "line 3: quantity" in res.stderr and "line 4: more fields than the header has" in res.stderr
    assert set(await stored(db)) == {"c1", "c4"}


async def test_oversized_request_id_is_refused_with_its_line(db, postgres_dsn, tmp_path):  # noqa: F811
    p = write_jsonl(tmp_path / "u.jsonl", [event("r1"), event("x" * 201)])
    res = run_ingest(postgres_dsn, p)
    assert res.returncode == 1
    assert "line 2: request_id: String should have at most 200 characters" in res.stderr
    assert await stored(db) == {}


# ---------------------------------------------------------------------------- reconcile


@pytest.mark.parametrize(("args", "message"), [
    (["--start-date", "2099-01-01", "--end-date", "2099-01-02"], "invalid window: start 2099-01-01 is in the future"),
    (["--start-date", "2020-01-01", "--end-date", "2026-01-01"], "spans more than"),
    (["--meter", "no_such_meter"], "no active Stripe meter for event name(s): no_such_meter"),
], ids=["future-window", "oversized-window", "unknown-meter"])
async def test_runs_refusing_their_input_exit_2_with_the_reason_and_write_nothing(
        args, message, cli_env, temporal_env, postgres_dsn, emulator, task_queue, clean_db, stripe_client):  # noqa: F811
    """The run refuses the window or meter (bad input, exit 2 like any bad argument)."""
    await seed_world(clean_db, stripe_client, n_customers=1, days=1)
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, _ = await cli(cli_env, "reconcile", "--apply", *args, "--wait", "--json")
    assert code == 2, out
    payload = json.loads(out)
    assert payload["status"] == "failed" and message in payload["error"], payload
    assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM billing.audit_log") == 0


# Refused by the command line itself, before anything connects: exit 2, one line, no traceback.
REFUSED = [
    (["approve", "run-1", "--actor", ""], "Invalid value for '--actor': must not be blank"),
    (["reject", "run-1", "--actor", "alice", "--reason", "  "], "Invalid value for '--reason': must not be blank"),
    (["pause", "--reason", "incident 42", "--actor", ""], "Invalid value for '--actor': must not be blank"),
    (["pause", "run-1", "--reason", ""], "Invalid value for '--reason': must not be blank"),
    (["resume", "--actor", " "], "Invalid value for '--actor': must not be blank"),
    (["runs", "--limit", "-1"], "Invalid value for '--limit': Input should be greater than or equal to 1"),
    (["report", "run-1", "--export-discrepancies", "/no/such/folder/x.csv"],
     "Invalid value for '--export-discrepancies': folder /no/such/folder does not exist"),
    (["reconcile", "--apply", "--settle-seconds", "-5"],
     "Invalid value for '--settle-seconds': Input should be greater than or equal to 0"),
    (["reconcile", "--apply", "--settle-seconds", "999999999999999"],
     "Invalid value for '--settle-seconds': Input should be less than or equal to 604800"),
    (["credits", "adjust", "--customer", "acme", "--amount", "99999999999999999999", "--reason", "x"],
     "Invalid value for '--amount': Input should be less than or equal to 9223372036854775807"),
    (["credits", "adjust", "--customer", "acme", "--amount", "-99999999999999999999", "--reason", "x"],
     "Invalid value for '--amount': Input should be greater than or equal to -9223372036854775808"),
    (["reconcile", "--epsilon", "a lot"], "invalid arguments: epsilon: Input should be a valid decimal"),
    (["audit", "--since", "last week"], "Invalid value for '--since': 'last week' is not a time"),
]


async def test_refused_arguments_exit_2_on_one_line_and_nothing_starts_or_is_written(
        cli_env, temporal_env, postgres_dsn, emulator, task_queue, clean_db):  # noqa: F811
    """With a worker ready to run whatever starts: every refusal is one `error:` line on stderr at
    40 columns (never folded, no traceback), exit 2, no workflow started, no row written."""
    await clean_db.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('acme', 'cus_a')")
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        for args, message in REFUSED:
            code, out, err = await cli({**cli_env, **NARROW}, *args)
            assert code == 2, (args, out, err)
            assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (args, err)
            assert out == "", (args, out)
    started = [wf.id async for wf in temporal_env.client.list_workflows(f"TaskQueue = '{task_queue}'")]
    assert started == []
    for table in ("reconciliation_runs", "audit_log", "credit_ledger", "credit_balances"):
        assert await clean_db.fetchval(f"SELECT count(*) FROM billing.{table}") == 0, table


async def test_window_beyond_stripes_35_days_is_reported_never_pushed(
        temporal_env, postgres_dsn, emulator, emulator_admin, task_queue, clean_db, stripe_client):
    """Usage older than Stripe accepts: reconciled locally, reported as needing an invoice
    adjustment, and not one meter event is attempted."""
    from billing.ingest import UsageEvent, ingest
    from common.types import Mode, RunStatus
    from reconcile.types import ReconcileResult, ReconcileUsageInput

    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, with_counters=False)
    old = datetime.now(UTC).date() - timedelta(days=40)
    cid = world.customer_ids[0]
    async with clean_db.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id="old-1", customer_id=cid, meter="api_requests", quantity=5,
                                       occurred_at=datetime.combine(old, datetime.min.time(), tzinfo=UTC))])
    await emulator_admin.reset_request_stats()
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        res = await temporal_env.client.execute_workflow(
            "ReconcileUsage", ReconcileUsageInput(start_date=old, end_date=old, customers=[cid], mode=Mode.APPLY,
                                                  settle_seconds=1, actor="pytest"),
            id=f"old-{world.tag}", task_queue=task_queue, result_type=ReconcileResult)
    assert res.status == RunStatus.COMPLETED
    assert res.counts.needs_invoice_adjustment == 1 and res.counts.corrections_pushed == 0
    assert "POST /v1/billing/meter_events" not in await emulator_admin.request_stats()
    assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes") == 0


# ---------------------------------------------------------------------------- webhooks


async def test_unknown_event_type_is_stored_and_ignored_without_side_effects(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue, register=False) as stack:
        now = int(datetime.now(UTC).timestamp())
        event = {"id": "evt_made_up_type", "object": "event", "type": "made.up_event_type", "created": now,
                 "api_version": "2026-10-28.endive", "livemode": False, "pending_webhooks": 1,
                 "data": {"object": {"id": "xyz_1", "object": "made_up"}}, "request": {"id": None}}
        r = await stack.deliver(event)
        assert r.status_code == 200, r.text
        await wait_until_settled(clean_db, emulator_admin)
    row = await clean_db.fetchrow("SELECT status, error FROM billing.stripe_events WHERE event_id = 'evt_made_up_type'")
    assert row["status"] == "ignored" and row["error"] is None
    for table in ("customers", "subscriptions", "invoices", "credit_ledger", "audit_log"):
        assert await clean_db.fetchval(f"SELECT count(*) FROM billing.{table}") == 0, table


async def test_webhook_with_wrong_content_is_400_before_anything_is_stored(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    """Signed, JSON, but an event without `data.object` or with a non-string type."""
    from stripe_emulator.webhooks import sign

    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue, register=False, with_worker=False) as stack:
        now = int(datetime.now(UTC).timestamp())
        cases = [
            {"id": "evt_1", "object": "event", "type": "customer.created", "created": now, "data": {}},
            {"id": "evt_2", "object": "event", "type": 42, "created": now, "data": {"object": {"id": "cus_1"}}},
            [1, 2, 3],
        ]
        async with httpx.AsyncClient() as http:
            for case in cases:
                body = json.dumps(case)
                r = await http.post(stack.endpoint, content=body,
                                    headers={"Stripe-Signature": sign(body, webhook_secret, now),
                                             "Content-Type": "application/json"})
                assert r.status_code == 400, (case, r.text)
                assert r.json()["error"]
    assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_events") == 0


@pytest.mark.parametrize(("credits", "message"), [("-500", "metadata.credits=-500 must be > 0"),
                                                  ("lots", "metadata.credits='lots' is not an integer")],
                         ids=["negative", "not-an-integer"])
async def test_bad_credit_purchase_fails_visibly_and_grants_nothing(
        credits, message, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret,
        task_queue, clean_db):
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue):
        cus = await stripe_client.v1.customers.create_async(params={"name": "B", "metadata": {"customer_id": "bad-c"}})
        product = await stripe_client.v1.products.create_async(params={"name": "credits"})
        price = await stripe_client.v1.prices.create_async(params={
            "product": product.id, "currency": "usd", "unit_amount": 100})
        cs = await stripe_client.v1.checkout.sessions.create_async(params={
            "mode": "payment", "customer": cus.id, "success_url": "https://example.com/ok",
            "line_items": [{"price": price.id, "quantity": 1}], "metadata": {"credits": credits}})
        await emulator_admin.complete_checkout_session(cs.id)
        await wait_until_settled(clean_db, emulator_admin)
    row = await clean_db.fetchrow(
        "SELECT status, error FROM billing.stripe_events WHERE type = 'checkout.session.completed'")
    assert row["status"] == "failed" and message in row["error"], dict(row)
    assert await clean_db.fetchval("SELECT count(*) FROM billing.credit_ledger") == 0
    assert not await clean_db.fetchval("SELECT coalesce(sum(balance), 0) FROM billing.credit_balances")
