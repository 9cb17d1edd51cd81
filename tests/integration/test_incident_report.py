"""The incident report on the real stack: a 3-day outage (usage never pushed, a failed run, no
webhook delivered), a manual credit adjustment, then a catch-up backfill. The report, read by
`billing-recon incident-report` from the durable records alone, must agree with the audit log
and with the emulator's meter event log."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from backfill.types import BackfillResult, CatchUpBackfillInput, DayOutcome
from common.types import Mode
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import ledger_by_key, make_settings, running_worker, seed_world

pytestmark = pytest.mark.integration

RUN_SQL = """
INSERT INTO billing.reconciliation_runs (run_id, mode, window_start, window_end, status, started_at, finished_at,
                                         error)
VALUES ($1, $2, $3, $3, $4, $5::timestamptz, $5::timestamptz + interval '1 minute', $6)
"""


async def test_report_of_a_three_day_outage_and_its_backfill_matches_audit_log_and_stripe(
        cli_env, clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=3, days=3, events_per_key=1,
                             meters={"api_requests": "API requests"})
    now = datetime.now(UTC)
    # The last success before the outage, and a run that failed during it.
    before = now - timedelta(days=3, hours=6)
    await clean_db.execute(RUN_SQL, "before-outage", "apply", world.start, "completed", before, None)
    await clean_db.execute(RUN_SQL, "during-outage", "apply", world.start, "failed", now - timedelta(days=2),
                           "Stripe did not answer")
    since = before - timedelta(minutes=30)
    c0 = world.customer_ids[0]
    # c0 pays for API requests at a metered price of 0.5 cents a request: its findings are priced.
    product = await stripe_client.v1.products.create_async(params={"name": "API"})
    price = await stripe_client.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount_decimal": "0.5",
        "recurring": {"interval": "month", "usage_type": "metered", "meter": world.meters["api_requests"]}})
    await stripe_client.v1.subscriptions.create_async(params={
        "customer": world.stripe_id(c0), "items": [{"price": price.id}]})
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        code, _, err = await cli(cli_env, "credits", "adjust", "--customer", c0, "--amount", "500",
                                 "--reason", "outage goodwill", "--actor", "alice")
        assert code == 0, err
        inp = CatchUpBackfillInput(start_date=world.start, end_date=world.end, mode=Mode.APPLY, settle_seconds=1,
                                   actor="oncall")  # its resync fills the subscription mirror
        backfill = await client.execute_workflow("CatchUpBackfill", inp, id=f"bf-{world.tag}", task_queue=task_queue,
                                                 result_type=BackfillResult)
        assert [d.outcome for d in backfill.days] == [DayOutcome.DONE] * 3

    code, out, err = await cli(cli_env, "incident-report", "--since", since.isoformat(), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    totals = report["totals"]

    # The outage: one window from the last success before it to the backfill's first success.
    [gap] = report["gaps"]
    first_backfill_success = await clean_db.fetchval(
        "SELECT min(finished_at) FROM billing.reconciliation_runs WHERE run_id = ANY($1) AND status = 'completed'", [d.run_id for d in backfill.days])
    assert datetime.fromisoformat(gap["start"]) == before + timedelta(minutes=1)
    assert datetime.fromisoformat(gap["end"]) == first_backfill_success
    assert gap["runs_failed"] == 1 and gap["last_error"] == "Stripe did not answer" and gap["ongoing"] is False

    # Every (customer, day) was under-reported and the backfill corrected it.
    ledger = await ledger_by_key(clean_db, world)
    assert totals["discrepancies"] == len(ledger) == 9
    assert totals["by_outcome"] == {"corrected": 9}
    assert {(d["customer_id"], d["day"]) for d in report["discrepancies"]} == {
        (c, day.isoformat()) for c, _, day in ledger}
    assert all(d["kind"] == "under_reported" for d in report["discrepancies"])
    assert Decimal(totals["quantity_by_meter"]["api_requests"]) == sum(ledger.values())
    # Priced where the mirror knows the price (c0), blank elsewhere.
    amounts = {(d["customer_id"], d["day"]): (d["amount_minor"], d["currency"]) for d in report["discrepancies"]}
    expected = {(c, day.isoformat()): (int((q * Decimal("0.5")).quantize(Decimal(1), ROUND_HALF_UP)), "usd")
                if c == c0 else (None, None) for (c, _, day), q in ledger.items()}
    assert amounts == expected
    assert totals["amount_minor_by_currency"] == {"usd": sum(a for a, _ in expected.values() if a is not None)}
    assert totals["unpriced"] == 6

    # The report's totals against the audit log ...
    audit = await clean_db.fetch("SELECT action, actor, reason FROM billing.audit_log WHERE at >= $1", since)
    pushes_audited = sum(a["action"] == "usage.push_meter_event" for a in audit)
    assert totals["audit_rows"] == len(audit)
    assert report["corrections"]["audit_actions"]["usage.push_meter_event"] == pushes_audited == 9
    assert report["corrections"]["unaudited"] == []
    assert [(m["actor"], m["action"], m["reason"]) for m in report["manual_adjustments"]] == [
        ("alice", "credits.adjust", "outage goodwill")]
    # ... and against Stripe's own record of what we sent.
    sent = [e for e in await emulator_admin.meter_events("api_requests") if not e["cancelled"]]
    assert totals["pushes_applied"] == len(sent) == 9
    assert Decimal(totals["pushes_applied_value"]) == sum(Decimal(str(e["payload"]["value"])) for e in sent) \
        == sum(ledger.values())
    # Webhook events never delivered during the outage, stored and processed by the backfill's replay.
    replayed = await clean_db.fetchval(
        "SELECT count(*) FROM billing.stripe_events WHERE source = 'replay' AND status IN ('processed', 'ignored')")
    assert replayed > 0 and totals["events_missed"] == report["events"]["missed_handled"] == replayed

    # The same report for people (Markdown) and for finance's spreadsheet (CSV lines).
    code, out, err = await cli(cli_env, "incident-report", "--since", since.isoformat(), "--format", "md")
    assert code == 0, err
    assert "## Windows without a successful reconciliation" in out and "Stripe did not answer" in out
    assert "| alice | credits.adjust |" in out
    code, out, err = await cli(cli_env, "incident-report", "--since", since.isoformat(), "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 9 and {r["outcome"] for r in rows} == {"corrected"}
    assert sorted(r["currency"] for r in rows) == [""] * 6 + ["usd"] * 3


async def test_incident_report_refuses_bad_input(cli_env, clean_db, tmp_path):
    code, _, err = await cli(cli_env, "incident-report", "--since", "2026-11-10", "--until", "2026-11-01")
    assert code == 2 and "is not after --since" in err
    code, _, err = await cli(cli_env, "incident-report", "--since", "3d", "--max-gap", "soon")
    assert code == 2 and "invalid --max-gap" in err
    code, _, err = await cli(cli_env, "incident-report", "--since", "3d", "--format", "pdf")
    assert code == 2 and "--format" in err
    code, _, err = await cli(cli_env, "incident-report", "--since", "3d", "-o", str(tmp_path / "no" / "r.md"))
    assert code == 2 and "does not exist" in err
    code, out, err = await cli(cli_env, "incident-report", "--since", "3d", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["discrepancies"] == 0
