"""Meters that do not aggregate with `sum` (count, last): one of them in the Stripe account used to
fail every default-scope run with UnsupportedMeter, the shipped usage schedules' included. Now
the default scope reports them (a run-level warning, and `unsupported_meter` findings for the
usage under them) and reconciles everything else; naming one with --meter is still bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.ingest import UsageEvent, ingest
from common.types import Mode, RunStatus
from reconcile.types import ReconcileUsageInput
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import (
    assert_stripe_equals_ledger,
    create_meters,
    make_settings,
    run,
    running_worker,
    seed_world,
)

pytestmark = pytest.mark.integration


async def _count_and_last_meters(sc) -> None:
    for name, formula in (("api_calls_count", "count"), ("seats_last", "last")):
        await sc.v1.billing.meters.create_async(params={
            "display_name": name, "event_name": name, "default_aggregation": {"formula": formula}})


async def test_default_scope_reports_non_sum_meters_and_reconciles_the_rest(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue, cli_env):  # noqa: F811
    world = await seed_world(clean_db, stripe_client, n_customers=3, days=2)
    await _count_and_last_meters(stripe_client)
    cid = world.customer_ids[0]
    async with clean_db.acquire() as conn:
        await ingest(conn, [UsageEvent(request_id=f"cnt-{world.tag}-{i}", customer_id=cid, meter="api_calls_count",
                                       quantity=Decimal(1), occurred_at=datetime.now(UTC) - timedelta(minutes=i + 1))
                            for i in range(3)])
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        result = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"meters-{world.tag}")
        # A full pass over every customer and meter of Stripe's window (the read-back's slices
        # run the same; tests/integration/test_readback.py) completes too.
        inp = ReconcileUsageInput(mode=Mode.APPLY, lookback_days=35, settle_seconds=1)
        res = await run(temporal_env.client, task_queue, inp, f"full-pass-{world.tag}", limit=120)
        assert res.status == RunStatus.COMPLETED, res
        assert len(res.warnings) == 2, res.warnings
        code, out, err = await cli(cli_env, "report", result.run_id, "--json")

    assert result.status == RunStatus.COMPLETED, result
    assert result.warnings == [
        "meter api_calls_count aggregates with 'count': only sum meters can be reconciled with delta "
        "corrections; its usage is reported (unsupported_meter), not reconciled",
        "meter seats_last aggregates with 'last': only sum meters can be reconciled with delta "
        "corrections; its usage is reported (unsupported_meter), not reconciled"]
    assert result.counts.unsupported_meter == 1 and result.counts.unmetered_usage == 0
    assert result.counts.corrections_pushed > 0  # the sum meters were synced in the same run
    row = await clean_db.fetchrow(
        "SELECT customer_id, meter, status, ledger_value, detail FROM billing.discrepancies WHERE run_id = $1 "
        "AND kind = 'unsupported_meter'", result.run_id)
    assert (row["customer_id"], row["meter"], row["status"], row["ledger_value"]) == (
        cid, "api_calls_count", "observed", Decimal(3))
    assert "aggregates with 'count'" in row["detail"]
    assert await clean_db.fetchval(
        "SELECT count(*) FROM billing.stripe_usage_pushes WHERE meter = 'api_calls_count'") == 0
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)
    # The report shows the warning too.
    assert code == 0, err
    assert json.loads(out)["counts"]["warnings"] == result.warnings


async def test_naming_a_non_sum_meter_is_still_refused_as_bad_input(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue, cli_env):  # noqa: F811
    await create_meters(stripe_client)
    await _count_and_last_meters(stripe_client)
    await clean_db.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('acme', 'cus_a')")
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, _ = await cli(cli_env, "reconcile", "--apply", "--meter", "api_calls_count", "--wait", "--json")
        human_code, _, human_err = await cli(cli_env, "reconcile", "--apply", "--meter", "seats_last", "--wait")
    assert code == 2, out
    payload = json.loads(out)
    assert payload["status"] == "failed" and payload["type"] == "UnsupportedMeter", payload
    assert "meter(s) api_calls_count do not aggregate with 'sum'" in payload["error"]
    errors = [line for line in human_err.splitlines() if line.startswith("error: ")]
    assert human_code == 2 and len(errors) == 1 and "meter(s) seats_last do not aggregate with 'sum'" in errors[0]
    for table in ("stripe_usage_pushes", "audit_log", "reconciliation_runs"):
        assert await clean_db.fetchval(f"SELECT count(*) FROM billing.{table}") == 0, table
