"""The invoice mirror follows the whole lifecycle, through the real stack: the emulator emits
every invoice event over HTTP to the real receiver, a worker processes them against Postgres;
ResyncInvoices (through the CLI) finds and fixes what the webhooks missed."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from autoheal import switch
from billing.stripe_objects import invoice_row
from common.types import Mode
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker
from tests.integration.webhook_helpers import (
    all_events,
    mirror_invoices,
    stripe_invoices,
    wait_until_settled,
    webhook_stack,
)
from webhooks.handlers import upsert_invoice
from webhooks.types import ReplayResult, ReplayWebhooksInput

pytestmark = pytest.mark.integration


async def lifecycle(sc, admin, cus_id: str) -> dict[str, str]:
    """One invoice per path through the lifecycle; their ids by path."""
    async def draft() -> str:
        return (await sc.v1.invoices.create_async(params={"customer": cus_id, "auto_advance": False})).id

    async def opened() -> str:
        inv = await draft()
        await sc.v1.invoices.finalize_invoice_async(inv, params={"auto_advance": False})
        return inv

    deleted = await draft()
    await sc.v1.invoices.update_async(deleted, params={"description": "never sent"})
    await sc.v1.invoices.delete_async(deleted)
    edited = await draft()
    await sc.v1.invoices.update_async(edited, params={"description": "November", "metadata": {"po": "7"}})
    voided = await opened()
    await sc.v1.invoices.mark_uncollectible_async(voided)
    await sc.v1.invoices.void_invoice_async(voided)
    recovered = await opened()
    await admin.fail_invoice_payment(recovered)
    await sc.v1.invoices.mark_uncollectible_async(recovered)
    await sc.v1.invoices.pay_async(recovered)
    still_open = await opened()
    return {"deleted": deleted, "edited": edited, "voided": voided, "recovered": recovered, "open": still_open}


async def test_every_invoice_event_keeps_the_mirror_equal_to_stripe(
        temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, webhook_secret, task_queue, clean_db):
    pool = clean_db
    async with webhook_stack(temporal_env.client, postgres_dsn, emulator, emulator_admin, stripe_client,
                             webhook_secret, task_queue) as stack:
        cus = await stripe_client.v1.customers.create_async(params={"metadata": {"customer_id": "inv-live"}})
        ids = await lifecycle(stripe_client, emulator_admin, cus.id)
        await wait_until_settled(pool, emulator_admin)

        mirror = await mirror_invoices(pool, [cus.id])
        stripe_side = await stripe_invoices(stripe_client, cus.id)
        assert {k: v for k, v in mirror.items() if k != ids["deleted"]} == stripe_side
        assert mirror[ids["voided"]]["status"] == "void" and mirror[ids["voided"]]["voided_at"]
        assert mirror[ids["voided"]]["marked_uncollectible_at"] and mirror[ids["voided"]]["finalized_at"]
        paid = mirror[ids["recovered"]]
        assert (paid["status"], paid["amount_remaining"], paid["attempt_count"]) == ("paid", 0, 2) and paid["paid_at"]
        assert mirror[ids["edited"]]["status"] == "draft"
        # A deleted draft stays in the mirror, marked deleted (Stripe has no object any more).
        assert (mirror[ids["deleted"]]["status"], bool(mirror[ids["deleted"]]["deleted_at"])) == ("deleted", True)
        kinds = {r["type"]: r["status"] for r in await pool.fetch(
            "SELECT type, status FROM billing.stripe_events WHERE type LIKE 'invoice.%'")}
        assert set(kinds) == {"invoice.created", "invoice.updated", "invoice.deleted", "invoice.finalized",
                              "invoice.marked_uncollectible", "invoice.voided", "invoice.payment_failed",
                              "invoice.paid", "invoice.payment_succeeded"}
        assert set(kinds.values()) == {"processed"}

        # Late and repeated deliveries of every invoice event, newest first: nothing moves back.
        for e in reversed([e for e in await all_events(stripe_client) if e["type"].startswith("invoice.")]):
            assert (await stack.deliver({**e, "id": f"{e['id']}_late"})).status_code == 200
        await wait_until_settled(pool, emulator_admin)
        assert await mirror_invoices(pool, [cus.id]) == mirror

        # A copy read before the stored one is never written: the mirror keeps its later read.
        stale = invoice_row((await stripe_client.v1.invoices.retrieve_async(ids["open"])).to_dict())
        stale = dataclasses.replace(stale, status="draft")
        async with pool.acquire() as conn:
            assert not await upsert_invoice(conn, stale, None, read_at=datetime.now(UTC) - timedelta(hours=1))
        assert (await mirror_invoices(pool, [cus.id]))[ids["open"]]["status"] == "open"


async def test_resync_invoices_finds_and_fixes_what_the_webhooks_missed(
        cli_env, temporal_env, postgres_dsn, emulator, emulator_admin, stripe_client, task_queue,  # noqa: F811
        clean_db):
    client, pool = temporal_env.client, clean_db
    tag = uuid.uuid4().hex[:6]
    sc = stripe_client
    cus = await sc.v1.customers.create_async(params={"metadata": {"customer_id": f"inv-{tag}"}})

    async def opened() -> str:
        inv = (await sc.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})).id
        await sc.v1.invoices.finalize_invoice_async(inv, params={"auto_advance": False})
        return inv

    to_void, to_pay, untouched = await opened(), await opened(), await opened()
    to_delete = (await sc.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})).id
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        # Mirrored by the webhook handlers (no endpoint: a replay of Stripe's events).
        res = await client.execute_workflow("ReplayWebhooks", ReplayWebhooksInput(mode=Mode.APPLY),
                                            id=f"replay-{tag}", task_queue=task_queue, result_type=ReplayResult)
        assert res.counts.failed == 0
        assert await mirror_invoices(pool, [cus.id]) == await stripe_invoices(sc, cus.id)
        # Then Stripe moves on and no webhook arrives: voided, paid, a draft deleted, a new invoice.
        await sc.v1.invoices.void_invoice_async(to_void)
        await sc.v1.invoices.pay_async(to_pay)
        await sc.v1.invoices.delete_async(to_delete)
        new = await opened()
        await pool.execute(
            """INSERT INTO billing.invoices (stripe_invoice_id, stripe_customer_id, status, stripe_created)
               VALUES ($1, $2, 'paid', now())""", f"in_ghost{tag}", cus.id)
        before = [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices ORDER BY 1")]

        code, out, err = await cli(cli_env, "resync-invoices", "--json")
        assert code == 0, err
        dry = json.loads(out)
        c = dry["counts"]
        assert (c["compared"], c["matched"], c["mismatched"], c["missing_local"]) == (3, 1, 2, 1), c
        assert (c["deleted_drafts"], c["missing_in_stripe"], c["fixed"], c["created"]) == (1, 1, 0, 0), c
        assert c["fields"]["status"] == 2 and c["fields"]["voided_at"] == 1 and c["fields"]["paid_at"] == 1
        assert sorted(dry["findings"]["mismatched"])[0].split(":")[0] in (to_void, to_pay)
        assert dry["findings"]["missing_local"] == [new] and dry["findings"]["deleted_drafts"] == [to_delete]
        assert dry["findings"]["missing_in_stripe"] == [f"in_ghost{tag}"]
        assert [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices ORDER BY 1")] == before

        # Paused: an apply observes and writes nothing.
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=True, actor="test", reason="incident")
        code, out, _ = await cli(cli_env, "resync-invoices", "--apply", "--json")
        assert code == 0 and json.loads(out)["paused"] and json.loads(out)["counts"]["mismatched"] == 2
        assert [dict(r) for r in await pool.fetch("SELECT * FROM billing.invoices ORDER BY 1")] == before
        async with pool.acquire() as conn:
            await switch.set_paused(conn, paused=False, actor="test", reason="over")

        code, out, err = await cli(cli_env, "resync-invoices", "--apply", "--actor", "alice", "--reason", "t-9",
                                   "--json")
        assert code == 0, err
        c = json.loads(out)["counts"]
        assert (c["fixed"], c["created"], c["drafts_marked_deleted"], c["fix_failures"]) == (2, 1, 1, 0), c
        mirror = await mirror_invoices(pool, [cus.id])
        assert {k: v for k, v in mirror.items() if k not in (to_delete, f"in_ghost{tag}")} == \
            await stripe_invoices(sc, cus.id)
        assert mirror[to_delete]["status"] == "deleted" and mirror[f"in_ghost{tag}"]["status"] == "paid"  # kept
        audit = {r["entity_id"]: r for r in await pool.fetch(
            "SELECT * FROM billing.audit_log WHERE action = 'invoice.resync'")}
        assert set(audit) == {to_void, to_pay, new, to_delete}
        assert {r["actor"] for r in audit.values()} == {"alice"} and {r["reason"] for r in audit.values()} == {"t-9"}
        assert audit[to_void]["before"]["status"] == "open" and audit[to_void]["after"]["status"] == "void"
        assert audit[new]["before"] is None and audit[new]["customer_id"] == f"inv-{tag}"
        assert audit[to_delete]["after"]["status"] == "deleted"
        assert untouched not in audit

        # Again: nothing to fix, nothing written.
        code, out, err = await cli(cli_env, "resync-invoices", "--apply", "--json")
        c = json.loads(out)["counts"]
        assert code == 0 and (c["mismatched"], c["missing_local"], c["deleted_drafts"]) == (0, 0, 0), c
        assert await pool.fetchval("SELECT count(*) FROM billing.audit_log WHERE action = 'invoice.resync'") == 4
        # Scoped and windowed; bad input.
        code, out, _ = await cli(cli_env, "resync-invoices", "--customer", f"inv-{tag}", "--days", "1", "--json")
        assert code == 0 and json.loads(out)["counts"]["compared"] == 4
        code, out, _ = await cli(cli_env, "resync-invoices", "--customer", "nobody", "--json")
        assert code == 2 and json.loads(out)["type"] == "UnknownCustomer"
        code, _, err = await cli(cli_env, "resync-invoices", "--days", "0")
        assert code == 2 and "--days" in err
