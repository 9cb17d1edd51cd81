"""The console clicked through in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium), against the real stack: the console process, a worker, Postgres, the
Temporal dev server and the Stripe emulator. Approve a plan, pause and resume, repair a
customer, filter the audit log; each is then checked in Postgres and in Temporal.

`CONSOLE_SCREENSHOTS=1` also re-takes the pictures of docs/console.md (docs/img/)."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowExecutionStatus

from autoheal.types import AUTOHEAL_WORKFLOW_ID
from autoheal.workflow import AutoHealControl
from common import ui
from common.client import connect
from common.types import Mode
from customer.repair_workflow import RepairCustomer
from reconcile.types import Phase, RunStatus
from starter.customer_commands import repair_workflow_id
from tests.integration.console_helpers import Browser, chromium_missing, console_process
from tests.integration.recon_helpers import (
    make_settings,
    running_worker,
    seed_world,
    start,
    wait_phase,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")]

ACTOR = "ada-approver"


@pytest.fixture
async def stack(cli_env, tmp_path, clean_db, temporal_env, postgres_dsn, emulator, task_queue):
    settings = make_settings(postgres_dsn, emulator)
    async with running_worker(temporal_env.client, settings, task_queue):
        with console_process(cli_env, tmp_path / "console.log") as base:
            browser = Browser(base)
            try:
                yield browser
            finally:
                await browser.close()
                try:
                    await temporal_env.client.get_workflow_handle(AUTOHEAL_WORKFLOW_ID).terminate("test done")
                except Exception:  # noqa: BLE001 - never started when an earlier step failed
                    pass


async def test_approve_pause_resume_repair_and_filter_the_audit_log(stack, clean_db, stripe_client, emulator_admin,
                                                                     temporal_env, task_queue):
    browser, pool, client = stack, clean_db, temporal_env.client
    world = await seed_world(pool, stripe_client, n_customers=3)
    planned, repaired = world.customer_ids[:2], world.customer_ids[2]
    run_id = f"plan-{world.tag}"
    # Started as the CLI starts it (with the default interceptors: its Temporal UI search attributes).
    cli_client = await connect(temporal_env.address)
    handle = await start(cli_client, task_queue, world.request(mode=Mode.PLAN, customers=planned), run_id)
    await wait_phase(handle, Phase.AWAITING_APPROVAL)
    proposed = await pool.fetchval("SELECT count(*) FROM billing.discrepancies WHERE run_id = $1 "
                                   "AND status = 'proposed'", run_id)
    assert proposed > 0

    await browser.sign_in(ACTOR)
    assert "ada-approver (approver)" in await browser.text("who")
    await browser.screenshot("overview")

    # ---- approve the plan
    await browser.get("/runs")
    await browser.screenshot("runs")
    await browser.click_link(run_id)
    assert await browser.text("run-status") == "awaiting_approval"
    await browser.screenshot("run")
    await browser.fill("approve-reason", "checked the plan")
    await browser.click("approve")
    assert "approved" in await browser.text("done")
    result = await handle.result()
    assert result.status == RunStatus.COMPLETED
    row = await pool.fetchrow("SELECT status, approved_by, decision_reason FROM billing.reconciliation_runs "
                              "WHERE run_id = $1", run_id)
    assert dict(row) == {"status": "completed", "approved_by": ACTOR, "decision_reason": "checked the plan"}
    assert await pool.fetchval("SELECT count(*) FROM billing.discrepancies WHERE run_id = $1 AND status = 'applied'",
                               run_id) == proposed
    approvals = await pool.fetch("SELECT actor, reason, workflow_id FROM billing.audit_log WHERE action = 'run.approve'")
    assert [dict(a) for a in approvals] == [{"actor": ACTOR, "reason": "checked the plan", "workflow_id": run_id}]
    assert len(await emulator_admin.meter_events()) == proposed
    # The same run found in Temporal by its search attributes.
    outcome = (await client.get_workflow_handle(run_id).describe()).typed_search_attributes.get(ui.OUTCOME)
    assert outcome is not None
    for _ in range(40):  # visibility is eventually consistent
        await browser.get(f"/runs/search?kind=reconcile-usage&outcome={outcome}")
        if run_id in await browser.texts("#found td a"):
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError(f"{run_id} ({outcome}) not found through /runs/search")
    await browser.screenshot("runs-search")
    await browser.fill("runs-customer", planned[0])  # by POST: the id stays out of the URL
    await browser.click("search-customer-runs")
    assert run_id in await browser.texts("#found td a") and planned[0] not in await browser.path()

    # ---- pause and resume auto-healing
    await browser.get("/")
    await browser.fill("reason", "incident 42")
    await browser.click("pause")
    state_text = await browser.text("autoheal-state")
    assert "PAUSED" in state_text and ACTOR in state_text and "incident 42" in state_text
    await browser.screenshot("overview-paused")
    switch = await pool.fetchrow("SELECT paused, actor, reason FROM billing.autoheal_state")
    assert dict(switch) == {"paused": True, "actor": ACTOR, "reason": "incident 42"}
    state = await client.get_workflow_handle(AUTOHEAL_WORKFLOW_ID).query(AutoHealControl.state)
    assert state.paused and state.actor == ACTOR
    await browser.fill("reason", "incident 42 over")
    await browser.click("resume")
    assert await browser.text("autoheal-state") == "active"
    assert not await pool.fetchval("SELECT paused FROM billing.autoheal_state")
    assert not (await client.get_workflow_handle(AUTOHEAL_WORKFLOW_ID).query(AutoHealControl.state)).paused
    switches = await pool.fetch("SELECT action, actor, reason FROM billing.audit_log "
                                "WHERE action IN ('autoheal.pause', 'autoheal.resume') ORDER BY id")
    assert [tuple(s) for s in switches] == [("autoheal.pause", ACTOR, "incident 42"),
                                            ("autoheal.resume", ACTOR, "incident 42 over")]

    # ---- repair a customer (its usage was never pushed: the repair pushes it)
    await browser.get("/customers")
    await browser.fill("customer", repaired)
    await browser.click("show-customer")
    assert await browser.text("customer-id") == repaired
    assert "mismatch" in await browser.text("mismatch-count")
    assert not (await browser.text("mismatch-count")).startswith("0 ")
    await browser.screenshot("customer")
    assert repaired not in await browser.path()  # the id went in the POST body, never in the URL
    await browser.fill("repair-reason", "ticket 7")
    await browser.click("repair")
    assert (await browser.path()).startswith("/repairs/") and repaired not in await browser.path()
    assert await browser.wait_text("repair-state", "done") == "done"
    await browser.screenshot("repair")
    repair_handle = client.get_workflow_handle_for(RepairCustomer.run, repair_workflow_id(repaired))
    assert (await repair_handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    repair = await repair_handle.result()
    assert repair.actor == ACTOR and repair.mode == Mode.APPLY and repair.before and repair.after == []
    assert repair.fixes and {f.actor for f in repair.fixes} == {ACTOR}
    fixes = await pool.fetch("SELECT action, actor, reason FROM billing.audit_log WHERE customer_id = $1", repaired)
    assert len(fixes) == len(repair.fixes) and {f["actor"] for f in fixes} == {ACTOR}
    # The customer row's fix carries the operator's reason (usage pushes name their finding).
    assert ("customer.resync", "ticket 7") in {(f["action"], f["reason"]) for f in fixes}
    pushed = await pool.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes WHERE customer_id = $1 "
                                 "AND status IN ('sent', 'confirmed')", repaired)
    assert pushed > 0

    # ---- filter the audit log
    await browser.get("/audit")
    await browser.fill("audit-actor", ACTOR)
    await browser.fill("audit-action", "autoheal.pause")
    await browser.click("filter-audit")
    assert await browser.texts(".audit-row .action") == ["autoheal.pause"]
    assert "/audit" == await browser.path()  # filters were posted: nothing personal in the URL
    await browser.get("/audit")
    await browser.fill("audit-customer", repaired)
    await browser.click("filter-audit")
    shown = await browser.texts(".audit-row .customer")
    expected = await pool.fetchval("SELECT count(*) FROM billing.audit_log WHERE customer_id = $1 "
                                   "OR (entity_type = 'customer' AND entity_id = $1)", repaired)
    assert len(shown) == expected > 0 and set(shown) <= {repaired, ""}
    assert set(await browser.texts(".audit-row .actor")) == {ACTOR}
    await browser.screenshot("audit")
    links = await browser.call(lambda: [a.get_attribute("href") for a in
                                        browser.driver.find_elements("css selector", ".audit-row a")])
    assert links and all(link.startswith("http://ui.test:8233/namespaces/default/workflows/") for link in links)
    # Every linked workflow is one Temporal knows.
    for workflow_id in {link.split("/workflows/")[1].split("/")[0] for link in links}:
        await client.get_workflow_handle(workflow_id).describe()

    # ---- the report views render
    await browser.get("/incidents")
    assert "Incident report" in await browser.text("report") or await browser.text("report")
    await browser.screenshot("incidents")
    await browser.get("/revenue")
    await browser.screenshot("revenue")
