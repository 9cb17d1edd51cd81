"""`billing-recon reconcile / report` as an operator runs them: a real subprocess against the
dev server, Postgres and the emulator, with a test worker on its own task queue."""

from __future__ import annotations

import csv
import json

import pytest

from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker, seed_world

pytestmark = pytest.mark.integration


async def test_invalid_range_exits_2_and_starts_nothing(cli_env, temporal_env):
    code, out, err = await cli(cli_env, "reconcile", "--start-date", "2026-02-01", "--end-date",
                               "2026-01-01", "--wait")
    assert code == 2
    assert "end_date 2026-01-01 is before start_date 2026-02-01" in err
    code, _, err = await cli(cli_env, "reconcile", "--start-date", "yesterday")
    assert code == 2 and "'yesterday' is not a day" in err
    code, _, err = await cli(cli_env, "reconcile", "--apply", "--plan")
    assert code == 2 and "choose one of" in err


async def test_unknown_customer_fails_the_run_with_exit_2(cli_env, temporal_env, postgres_dsn,
                                                          emulator, task_queue, clean_db, stripe_client):
    """The run refuses an unknown customer: bad input, exit 2, as every command's (resync, credits)."""
    await seed_world(clean_db, stripe_client, n_customers=1, days=1)
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, _ = await cli(cli_env, "reconcile", "--apply", "--customer", "nobody", "--wait", "--json")
        assert code == 2
        payload = json.loads(out)
        assert payload["status"] == "failed" and payload["type"] == "UnknownCustomer"
        assert payload["error"] == "unknown customer(s): nobody"
        # Without --json: the same failure as one line on stderr.
        code, out, err = await cli({**cli_env, "COLUMNS": "40"}, "reconcile", "--apply", "--customer", "nobody",
                                   "--wait", "--id", "cli-nobody")
    assert code == 2
    assert err.splitlines()[-1] == "error: cli-nobody failed: unknown customer(s): nobody", err
    assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes") == 0


async def test_dry_run_json_then_report_and_csv_export(cli_env, temporal_env, postgres_dsn, emulator,
                                                       task_queue, clean_db, stripe_client, tmp_path):
    world = await seed_world(clean_db, stripe_client, n_customers=2, days=2)
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, _ = await cli(
            cli_env, "reconcile", "--dry-run", "--start-date", str(world.start), "--end-date",
            str(world.end), "--wait", "--json", "--id", f"cli-dry-{world.tag}")
    assert code == 0, out
    payload = json.loads(out)  # one JSON object: run id and counts
    assert payload["run_id"] == f"cli-dry-{world.tag}" and payload["status"] == "completed"
    keys = 2 * len(world.meters) * 2  # customers x meters x days, nothing pushed yet
    assert payload["counts"]["keys_checked"] == keys
    assert payload["counts"]["drift_count"] == keys  # every key is unpushed usage
    assert payload["counts"]["stripe_writes"] == 0

    export = tmp_path / "drift.csv"
    code, out, _ = await cli(cli_env, "report", payload["run_id"], "--json",
                             "--export-discrepancies", str(export))
    assert code == 0
    report = json.loads(out)
    assert report["status"] == "completed" and len(report["discrepancies"]) == keys
    rows = list(csv.DictReader(export.open()))
    assert len(rows) == keys
    assert {r["kind"] for r in rows} == {"under_reported"} and {r["status"] for r in rows} == {"observed"}

    code, _, err = await cli(cli_env, "report", "no-such-run")
    assert code == 1 and "no reconciliation run 'no-such-run'" in err
