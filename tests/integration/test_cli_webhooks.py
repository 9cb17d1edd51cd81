"""`billing-recon replay-webhooks` and `events` as an operator runs them (real subprocess)."""

from __future__ import annotations

import json

import pytest

from tests.integration.recon_helpers import running_worker
from tests.integration.test_cli_reconcile import cli, cli_env  # noqa: F401  (fixture)
from tests.integration.webhook_helpers import webhook_settings

pytestmark = pytest.mark.integration


async def test_bad_windows_exit_2_and_start_nothing(cli_env):  # noqa: F811
    code, _, err = await cli(cli_env, "replay-webhooks", "--since", "2026-11-02", "--until", "2026-11-01")
    assert code == 2 and "is not after since" in err
    code, _, err = await cli(cli_env, "replay-webhooks", "--since", "last tuesday")
    assert code == 2 and "not a time" in err
    code, _, err = await cli(cli_env, "replay-webhooks", "--days", "31")
    assert code == 2 and "invalid arguments" in err
    code, _, err = await cli(cli_env, "replay-webhooks", "--dry-run", "--apply")
    assert code == 2 and "choose one of" in err


async def test_dry_run_then_apply_then_inbox(cli_env, temporal_env, postgres_dsn, emulator, webhook_secret,  # noqa: F811
                                             task_queue, clean_db, stripe_client):
    # Stripe holds events nobody delivered (no endpoint registered), one of them unprocessable.
    await stripe_client.v1.customers.create_async(params={"name": "A", "metadata": {"customer_id": "cli-a"}})
    await clean_db.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('cli-b', 'cus_x')")
    await stripe_client.v1.customers.create_async(params={"name": "B", "metadata": {"customer_id": "cli-b"}})
    settings = webhook_settings(postgres_dsn, emulator, webhook_secret, task_queue)
    async with running_worker(temporal_env.client, settings, task_queue):
        code, out, err = await cli(cli_env, "replay-webhooks", "--json")
        assert code == 0, err
        dry = json.loads(out)
        assert dry["mode"] == "dry-run" and dry["counts"]["never_received"] == 2 and len(dry["sample"]) == 2
        assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_events") == 0

        code, out, err = await cli(cli_env, "replay-webhooks", "--apply", "--type", "customer.*", "--json")
        applied = json.loads(out)
        assert code == 1, "a replay with failed events exits 1"
        assert applied["counts"]["replayed"] == 1 and applied["counts"]["failed"] == 1
        assert "cli-b is linked to cus_x" in applied["failures"][0]

    code, out, _ = await cli(cli_env, "events", "--status", "failed", "--json")
    assert code == 0
    failed = json.loads(out)
    assert [e["type"] for e in failed] == ["customer.created"] and "cli-b" in failed[0]["error"]
    code, out, _ = await cli(cli_env, "events")
    assert code == 0 and "failed=1" in out and "processed=1" in out
