"""`billing-recon replay-webhooks` and `events` as an operator runs them (real subprocess)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import running_worker
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

        # The failure is understood and will not be fixed: dismiss it. Once; audited.
        evt = failed[0]["event_id"]
        code, out, err = await cli(cli_env, "events", "dismiss", evt, "--reason", "test customer, deleted",
                                   "--actor", "alice")
        assert code == 0 and f"{evt} (customer.created): dismissed by alice" in out, err
        code, out, err = await cli(cli_env, "events", "dismiss", evt, "--reason", "again", "--actor", "bob")
        assert code == 0 and "already dismissed by alice" in out and "nothing changed" in out, err
        audit = await clean_db.fetch("SELECT * FROM billing.audit_log WHERE action = 'event.dismiss'")
        assert [(r["actor"], r["reason"], r["entity_id"]) for r in audit] == [("alice", "test customer, deleted", evt)]
        assert audit[0]["before"]["status"] == "failed" and "cli-b" in audit[0]["before"]["error"]
        code, out, _ = await cli(cli_env, "events", "--status", "dismissed", "--json")
        assert [e["event_id"] for e in json.loads(out)] == [evt]
        # Replays skip it and no longer fail.
        code, out, err = await cli(cli_env, "replay-webhooks", "--apply", "--json")
        assert code == 0, (out, err)
        replayed = json.loads(out)["counts"]
        assert (replayed["failed"], replayed["dismissed"], replayed["pending"]) == (0, 1, 0), replayed
        assert await clean_db.fetchval("SELECT status FROM billing.stripe_events WHERE event_id = $1", evt) \
            == "dismissed"

        # Refused: a processed event (exit 2), an unknown one (exit 1), a blank reason (exit 2).
        processed = await clean_db.fetchval("SELECT event_id FROM billing.stripe_events WHERE status = 'processed'")
        code, out, _ = await cli(cli_env, "events", "dismiss", processed, "--reason", "x", "--json")
        refused = json.loads(out)
        assert code == 2 and refused["type"] == "EventNotDismissable", out
        assert "is processed: only a failed event can be dismissed" in refused["error"]
        code, _, err = await cli(cli_env, "events", "dismiss", "evt_nope", "--reason", "x")
        assert code == 1 and "evt_nope is not in the inbox" in err
        code, _, err = await cli(cli_env, "events", "dismiss", evt, "--reason", " ")
        assert code == 2 and "must not be blank" in err
        assert await clean_db.fetchval("SELECT count(*) FROM billing.audit_log WHERE action = 'event.dismiss'") == 1
        with pytest.raises(asyncpg.CheckViolationError):  # the inbox's statuses are still constrained
            await clean_db.execute("UPDATE billing.stripe_events SET status = 'bogus' WHERE event_id = $1", evt)
