"""Every operator command that writes, run twice, as an operator runs it (a real CLI subprocess
against the dev server, a worker, Postgres and the emulator): the second run is a no-op that
says so and exits 0, or, for a scan started again under the same `--id`, a new run whose fixes
are audited like the first run's (`credits adjust`: tests/integration/test_credit_edges.py;
global pause/resume: test_cli_operations.py)."""

from __future__ import annotations

import uuid

import pytest

from common.types import Mode
from reconcile.types import Phase
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import (
    make_settings,
    running_worker,
    seed_world,
    start,
    wait_phase,
)
from webhooks.types import ReplayResult, ReplayWebhooksInput

pytestmark = pytest.mark.integration


async def actions(pool, workflow_id: str) -> list[str]:
    return [r["action"] for r in await pool.fetch(
        "SELECT action FROM billing.audit_log WHERE workflow_id = $1 ORDER BY id", workflow_id)]


async def test_run_pause_resume_approve_reject_twice(cli_env, temporal_env, postgres_dsn, emulator,  # noqa: F811
                                                     stripe_client, task_queue, clean_db):
    client, pool = temporal_env.client, clean_db
    world = await seed_world(pool, stripe_client, n_customers=1, days=1)
    run_id = f"plan-twice-{world.tag}"
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        handle = await start(client, task_queue, world.request(mode=Mode.PLAN), run_id)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)

        for verb, again in (("pause", "already paused; nothing sent"),
                            ("resume", "already running (not paused); nothing sent")):
            code, out, err = await cli(cli_env, verb, run_id, "--actor", "alice", "--reason", "twice")
            assert code == 0 and f"{verb} sent by alice" in out, err
            code, out, err = await cli(cli_env, verb, run_id, "--actor", "alice", "--reason", "twice")
            assert code == 0 and again in out, (out, err)

        code, out, err = await cli(cli_env, "approve", run_id, "--actor", "alice", "--reason", "checked")
        assert code == 0 and "approved by alice" in out, err
        code, out, err = await cli(cli_env, "approve", run_id, "--actor", "bob")
        assert code == 0 and f"{run_id}: already approved by alice; nothing to do" in out, err
        code, _, err = await cli(cli_env, "reject", run_id, "--actor", "bob")
        assert code == 1 and "reject refused" in err  # already approved (or, by now, finished)
        await handle.result()
        # Closed: the same decision is still a no-op, the other one still refused.
        code, out, err = await cli(cli_env, "approve", run_id, "--actor", "alice")
        assert code == 0 and "already approved by alice" in out, err
        code, _, err = await cli(cli_env, "reject", run_id, "--actor", "bob")
        assert code == 1 and "reject refused" in err

    assert [a for a in await actions(pool, run_id) if a.startswith("run.")] == [
        "run.pause", "run.resume", "run.approve"]


async def test_repair_and_resync_again_under_the_same_id_audit_each_fix(
        cli_env, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue,  # noqa: F811
        clean_db):
    """A scan started again under the same `--id` (a schedule, an operator re-running a command)
    is a new run: with nothing drifted it writes nothing; what drifted again is fixed and audited
    again (the audit key names the execution, so the second fix does not collide with the first)."""
    client, pool = temporal_env.client, clean_db
    tag = uuid.uuid4().hex[:6]
    cus = await stripe_client.v1.customers.create_async(params={"metadata": {"customer_id": f"same-{tag}"}})
    product = await stripe_client.v1.products.create_async(params={"name": tag})
    price = await stripe_client.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 100, "recurring": {"interval": "month"}})
    sub = await stripe_client.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": price.id}]})
    customer = f"same-{tag}"
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        await client.execute_workflow("ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY), id=f"replay-{tag}",
                                      task_queue=task_queue, result_type=ReplayResult)
        await pool.execute("INSERT INTO billing.credit_balances (customer_id, balance) VALUES ($1, 0)", customer)

        async def drift() -> None:
            await pool.execute("UPDATE billing.credit_balances SET balance = 7 WHERE customer_id = $1", customer)
            await pool.execute("UPDATE billing.subscriptions SET status = 'unpaid' WHERE stripe_subscription_id = $1",
                               sub.id)

        repair_id, resync_id = f"repair-same-{tag}", f"resync-same-{tag}"
        for round_ in (1, 2):
            await drift()
            code, _, err = await cli(cli_env, "repair-credits", "--apply", "--id", repair_id, "--customer", customer)
            assert code == 0, err
            code, _, err = await cli(cli_env, "resync-subscriptions", "--apply", "--id", resync_id)
            assert code == 0, err
            assert await actions(pool, repair_id) == ["credits.balance_repair"] * round_
            assert await actions(pool, resync_id) == ["subscription.resync"] * round_
            assert await pool.fetchval(
                "SELECT balance FROM billing.credit_balances WHERE customer_id = $1", customer) == 0
        # Nothing drifted: the same commands again write nothing.
        for args in (("repair-credits", "--apply", "--id", repair_id), ("resync-subscriptions", "--apply", "--id",
                                                                        resync_id)):
            code, _, err = await cli(cli_env, *args)
            assert code == 0, err
        assert len(await actions(pool, repair_id)) == len(await actions(pool, resync_id)) == 2
