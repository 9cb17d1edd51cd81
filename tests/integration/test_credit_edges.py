"""Credits at the edges, through the real stack (dev server, a worker, Postgres, the emulator over
HTTP with the official SDK, the CLI as a subprocess):

- a re-grant by `repair-credits` has its own audit row (the original grant's row still exists);
- a customer whose ledger sums below zero is refused and left untouched, every other customer is
  repaired, the run says so and the CLI exits 1 (it used to fail the run after the grant phase
  had committed: a double grant, no audit row, every later customer unrepaired);
- `credits adjust` applies once per idempotency key: the same command twice applies once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from common.types import Mode
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker
from tests.integration.webhook_helpers import credit_purchase
from webhooks.types import ReplayResult, ReplayWebhooksInput

pytestmark = pytest.mark.integration


async def customer_rows(pool, customer_id: str) -> dict[str, Any]:
    return {
        "balance": await pool.fetchval("SELECT balance FROM billing.credit_balances WHERE customer_id = $1",
                                       customer_id),
        "ledger": [dict(r) for r in await pool.fetch(
            "SELECT id, amount, source FROM billing.credit_ledger WHERE customer_id = $1 ORDER BY id", customer_id)],
        "audit": [dict(r) for r in await pool.fetch(
            "SELECT action, idempotency_key FROM billing.audit_log WHERE customer_id = $1 ORDER BY id", customer_id)],
    }


async def test_a_refused_customer_is_left_untouched_and_every_other_one_is_repaired(
        cli_env, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue,  # noqa: F811
        clean_db):
    client, pool = temporal_env.client, clean_db
    tag = uuid.uuid4().hex[:6]
    # b: bought 2500 credits; the webhook granted them (ledger row, balance 2500, audit row).
    b = f"b-double-{tag}"
    _, cs = await credit_purchase(stripe_client, emulator_admin, b, 2500)
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        res = await client.execute_workflow(
            "ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY), id=f"replay-{tag}", task_queue=task_queue,
            result_type=ReplayResult)
        assert res.counts.failed == 0, res
        first_grant = await customer_rows(pool, b)
        assert first_grant["balance"] == 2500 and [a["action"] for a in first_grant["audit"]] == ["credits.grant"]
        # The ledger row is lost; the balance and the original audit row are not.
        await pool.execute("DELETE FROM billing.credit_ledger WHERE source = $1", f"checkout:{cs}")
        # a: a hand-written debit made its ledger sum below zero (-15 against a balance of 10).
        a = f"a-neg-{tag}"
        await pool.execute("INSERT INTO billing.customers (customer_id) VALUES ($1)", a)
        await pool.execute("INSERT INTO billing.credit_balances (customer_id, balance) VALUES ($1, 10)", a)
        await pool.execute("""INSERT INTO billing.credit_ledger (customer_id, amount, source, reason)
                              VALUES ($1, 10, $2, 'seed'), ($1, -25, $3, 'hand-written SQL')""",
                           a, f"seed:{tag}", f"legacy:{tag}")
        # c (after a in the balances phase): a balance off by 7.
        c = f"c-off-{tag}"
        await pool.execute("INSERT INTO billing.customers (customer_id) VALUES ($1)", c)
        await pool.execute("INSERT INTO billing.credit_balances (customer_id, balance) VALUES ($1, 7)", c)
        a_before = await customer_rows(pool, a)

        code, out, err = await cli(cli_env, "repair-credits", "--apply", "--actor", "alice", "--json")
        assert code == 1, (out, err)
        result = json.loads(out)
        counts = result["counts"]
        assert (counts["grants_made"], counts["balances_repaired"]) == (1, 2), counts
        assert (counts["negative_ledger"], counts["refused_customers"], counts["grants_refused"]) == (1, 1, 0)
        assert len(result["findings"]["refused"]) == 1
        assert result["findings"]["refused"][0].startswith(f"{a}: balance 10 not repaired: the ledger sums to -15")

        # a: untouched. b: granted once more (its own audit row), then its balance set to the ledger.
        assert await customer_rows(pool, a) == a_before
        after = await customer_rows(pool, b)
        assert after["balance"] == 2500 and [r["amount"] for r in after["ledger"]] == [2500]
        regrant = after["ledger"][0]["id"]
        assert [x["action"] for x in after["audit"]] == ["credits.grant", "credits.grant", "credits.balance_repair"]
        assert after["audit"][1]["idempotency_key"] == f"credit-ledger:{regrant}"
        repair_key = after["audit"][2]["idempotency_key"]
        assert repair_key.startswith(f"balance-repair:{result['run_id']}:") and repair_key.endswith(f":{b}")
        grant_row = await pool.fetchrow("SELECT * FROM billing.audit_log WHERE idempotency_key = $1",
                                        f"credit-ledger:{regrant}")
        assert (grant_row["actor"], grant_row["workflow_id"]) == ("alice", result["run_id"])
        assert grant_row["after"]["ledger_id"] == regrant and grant_row["before"] == {"balance": 2500}
        repair_row = await pool.fetchrow(
            "SELECT * FROM billing.audit_log WHERE action = 'credits.balance_repair' AND customer_id = $1", b)
        assert (repair_row["before"], repair_row["after"]["balance"]) == ({"balance": 5000}, 2500)
        assert await pool.fetchval("SELECT balance FROM billing.credit_balances WHERE customer_id = $1", c) == 0

        # Again: nothing left to do for b and c; a is refused again and the CLI still says so.
        audits = await pool.fetchval("SELECT count(*) FROM billing.audit_log")
        code, out, _ = await cli(cli_env, "repair-credits", "--apply", "--json")
        assert code == 1 and json.loads(out)["counts"]["refused_customers"] == 1
        assert json.loads(out)["counts"]["balances_repaired"] == 0
        assert await pool.fetchval("SELECT count(*) FROM billing.audit_log") == audits
        # A dry-run reports the negative ledger and exits 0 (it refused nothing).
        code, out, _ = await cli(cli_env, "repair-credits", "--json")
        assert code == 0 and json.loads(out)["counts"]["negative_ledger"] == 1


async def test_a_grant_to_a_customer_with_a_negative_ledger_is_refused(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue, clean_db):
    """The grant phase checks the customer under its balance lock before writing: nothing is
    granted to a customer that the run refuses."""
    from credits.types import RepairCreditsInput, RepairResult

    client, pool = temporal_env.client, clean_db
    tag = uuid.uuid4().hex[:6]
    neg = f"neg-{tag}"
    _, cs = await credit_purchase(stripe_client, emulator_admin, neg, 300)
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        await client.execute_workflow(
            "ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY), id=f"replay-{tag}", task_queue=task_queue,
            result_type=ReplayResult)
        await pool.execute("DELETE FROM billing.credit_ledger WHERE source = $1", f"checkout:{cs}")
        await pool.execute("""INSERT INTO billing.credit_ledger (customer_id, amount, source, reason)
                              VALUES ($1, -400, $2, 'hand-written SQL')""", neg, f"legacy:{tag}")
        before = await customer_rows(pool, neg)
        res = await client.execute_workflow(
            "RepairCredits", RepairCreditsInput(mode=Mode.APPLY, actor="alice"), id=f"repair-{tag}",
            task_queue=task_queue, result_type=RepairResult)
    c = res.counts
    assert (c.missing_grants, c.grants_made, c.grants_refused, c.refused_customers) == (1, 0, 1, 1), c
    assert res.checks.checkouts_without_ledger_entry == 1
    assert any(f.startswith(f"{neg}: grant of {cs} refused: the ledger sums to -400") for f in res.findings.refused)
    assert await customer_rows(pool, neg) == before


async def test_credits_adjust_applies_once_per_idempotency_key(
        cli_env, temporal_env, postgres_dsn, emulator, task_queue, clean_db):  # noqa: F811
    client, pool = temporal_env.client, clean_db
    await pool.execute("INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('acme', 'cus_acme')")
    adjust = ("credits", "adjust", "--customer", "acme", "--amount", "300", "--reason", "goodwill",
              "--actor", "alice", "--json")
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, err = await cli(cli_env, *adjust)
        assert code == 0, err
        first = json.loads(out)
        assert (first["balance_after"], first["already_applied"]) == (300, False)
        assert first["source"] == f"manual:{first['idempotency_key']}"
        assert first["idempotency_key"].startswith("acme:+300:")

        # The same command again: a no-op that says so, exit 0.
        code, out, err = await cli(cli_env, *adjust)
        assert code == 0, err
        again = json.loads(out)
        assert again["already_applied"] and again["ledger_id"] == first["ledger_id"]
        assert again["balance_before"] == again["balance_after"] == 300
        code, out, _ = await cli(cli_env, *adjust[:-1])  # without --json
        assert code == 0 and "already applied" in out and "nothing written" in out
        assert await pool.fetchval("SELECT count(*) FROM billing.credit_ledger") == 1
        assert await pool.fetchval("SELECT count(*) FROM billing.audit_log WHERE action = 'credits.adjust'") == 1
        row = await pool.fetchrow("SELECT * FROM billing.audit_log WHERE action = 'credits.adjust'")
        assert row["idempotency_key"] == f"credit-ledger:{first['ledger_id']}"

        # A deliberate second adjustment of the same amount: its own key.
        code, out, err = await cli(cli_env, *adjust, "--idempotency-key", "ticket-43")
        assert code == 0 and json.loads(out)["balance_after"] == 600, err
        # The same key for another amount is refused: exit 2, nothing written.
        code, out, _ = await cli(cli_env, "credits", "adjust", "--customer", "acme", "--amount", "400",
                                 "--reason", "goodwill", "--idempotency-key", "ticket-43", "--json")
        refused = json.loads(out)
        assert code == 2 and refused["type"] == "IdempotencyKeyReused", out
        assert "was already used for +300 to acme" in refused["error"]
        assert await pool.fetchval("SELECT balance FROM billing.credit_balances WHERE customer_id = 'acme'") == 600

        # A refused debit writes nothing; the same command after a top-up applies it.
        debit = ("credits", "adjust", "--customer", "acme", "--amount", "-700", "--reason", "chargeback",
                 "--actor", "bob", "--json")
        code, out, _ = await cli(cli_env, *debit)
        assert code == 1 and json.loads(out)["type"] == "NegativeBalance"
        code, _, err = await cli(cli_env, "credits", "adjust", "--customer", "acme", "--amount", "100",
                                 "--reason", "top-up", "--actor", "bob")
        assert code == 0, err
        code, out, err = await cli(cli_env, *debit)
        assert code == 0 and json.loads(out)["balance_after"] == 0, (out, err)
        code, out, _ = await cli(cli_env, *debit)
        assert code == 0 and json.loads(out)["already_applied"]
        assert await pool.fetchval("SELECT count(*) FROM billing.credit_ledger") == 4
        code, _, err = await cli(cli_env, "credits", "adjust", "--customer", "acme", "--amount", "5",
                                 "--reason", "x", "--idempotency-key", " ")
        assert code == 2 and "must not be blank" in err
