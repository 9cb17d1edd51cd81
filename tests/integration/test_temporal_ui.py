"""Temporal UI metadata on the real stack (docs/temporal-ui.md): runs started by the CLI carry
our search attributes, `temporal workflow list --query` finds them by each one, `temporal
workflow describe` shows their summary and details, a plan awaiting approval is found by its
outcome with the command to act, `runs`/`audit` filter through the visibility API, and
`billing-recon temporal setup` registers the attributes idempotently."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from billing import schedules
from common import ui, ui_interceptor
from common.client import connect
from devstack.components import find_temporal_binary
from health.types import SmokeCheck
from health.workflow import Smoke
from reconcile.types import Phase
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker, seed_world, wait_phase


async def temporal_cli(env, *args: str) -> Any:
    """The `temporal` binary against the session's dev server; its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        find_temporal_binary(), *args, "--address", env.address, "--namespace", env.namespace, "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode().strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()] if "\n{" in text else json.loads(text)


async def listed(env, query: str) -> set[str]:
    rows = await temporal_cli(env, "workflow", "list", "--query", query)
    return {r["execution"]["workflowId"] for r in rows}


async def eventually_listed(env, query: str, workflow_id: str) -> set[str]:
    """Visibility is eventually consistent: the run shows up within seconds."""
    for _ in range(100):
        found = await listed(env, query)
        if workflow_id in found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} not listed by {query}")


async def test_cli_runs_are_found_by_every_search_attribute_and_describe_shows_details(
        temporal_env, postgres_dsn, emulator, task_queue, clean_db, stripe_client, cli_env):
    world = await seed_world(clean_db, stripe_client, n_customers=2, days=1, with_counters=False)
    customer = world.customer_ids[0]
    correlation = f"corr-{world.tag}"
    env = {**cli_env, "BILLING_CORRELATION_ID": correlation}
    run_id = f"ui-apply-{world.tag}"
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, err = await cli(env, "reconcile", "--apply", "--customer", customer, "--settle-seconds", "1",
                                   "--id", run_id, "--wait", "--json")
        assert code == 0, err
        assert json.loads(out)["counts"]["corrections_pushed"] > 0  # never pushed before: drift fixed

        for query in (f"BillingRunKind = 'reconcile-usage' AND BillingCorrelationId = '{correlation}'",
                      f"BillingMode = 'apply' AND BillingCorrelationId = '{correlation}'",
                      f"BillingCustomerIds = '{customer}'",
                      f"BillingCorrelationId = '{correlation}'",
                      f"BillingOutcome = 'drift_fixed' AND BillingCustomerIds = '{customer}'"):
            assert await eventually_listed(temporal_env, query, run_id) == {run_id}, query
        # The other customer's id finds nothing: the run named only `customer`.
        assert await listed(temporal_env, f"BillingCustomerIds = '{world.customer_ids[1]}'") == set()

        described = await temporal_cli(temporal_env, "workflow", "describe", "-w", run_id)
        metadata = described["executionConfig"]["userMetadata"]
        summary = json.dumps(metadata["summary"])
        details = json.dumps(metadata["details"])
        assert "reconcile-usage apply" in summary and customer in summary
        assert f"billing-recon report {run_id}" in details and correlation in details
        handle = temporal_env.client.get_workflow_handle(run_id)
        desc = await handle.describe()
        assert (await desc.static_summary() or "").startswith("reconcile-usage apply")
        assert desc.typed_search_attributes.get(ui.OUTCOME) == "drift_fixed"
        # The finished run's current details: its outcome and counts (the metadata query).
        current = await handle.query("__temporal_workflow_metadata")
        assert "drift_fixed" in current.current_details and "corrections_pushed" in current.current_details

        # A dry-run of the same customer now finds nothing: outcome clean.
        code, out, err = await cli(env, "reconcile", "--dry-run", "--customer", customer, "--id", f"{run_id}-dry",
                                   "--wait", "--json")
        assert code == 0, err
        await eventually_listed(temporal_env, f"BillingOutcome = 'clean' AND BillingCustomerIds = '{customer}'",
                                f"{run_id}-dry")

    # `runs` and `audit` filter through the same visibility API.
    code, out, err = await cli(env, "runs", "--kind", "reconcile-usage", "--outcome", "drift_fixed",
                               "--customer", customer, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["workflow_id"], r["mode"], r["outcome"], r["customers"], r["correlation_id"]) for r in rows] == \
           [(run_id, "apply", "drift_fixed", [customer], correlation)]
    code, out, err = await cli(env, "runs", "--mode", "dry-run", "--correlation-id", correlation, "--json")
    assert code == 0, err
    assert [r["workflow_id"] for r in json.loads(out)] == [f"{run_id}-dry"]
    code, out, err = await cli(env, "audit", "--kind", "reconcile-usage", "--outcome", "drift_fixed",
                               "--customer", customer, "--json")
    assert code == 0, err
    audit = json.loads(out)
    assert audit and {r["workflow_id"] for r in audit} == {run_id}
    code, out, err = await cli(env, "audit", "--outcome", "failed", "--customer", customer, "--json")
    assert code == 0 and json.loads(out) == []

    # Bad filter values are refused before anything is asked: one line, exit 2.
    code, out, err = await cli(env, "runs", "--customer", "x' OR BillingMode = 'apply")
    assert code == 2 and "--customer" in err and len(err.strip().splitlines()) == 1 and out == ""
    code, out, err = await cli(env, "runs", "--outcome", "great")
    assert code == 2, err


async def test_a_plan_awaiting_approval_is_found_by_its_outcome_with_the_command_to_act(
        temporal_env, postgres_dsn, emulator, task_queue, clean_db, stripe_client, cli_env):
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, with_counters=False)
    run_id = f"ui-plan-{world.tag}"
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, err = await cli(cli_env, "reconcile", "--plan", "--customer", world.customer_ids[0],
                                   "--settle-seconds", "1", "--id", run_id)
        assert code == 0, err
        handle = temporal_env.client.get_workflow_handle(run_id)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        await eventually_listed(temporal_env, "BillingOutcome = 'awaiting_approval' AND BillingMode = 'plan'", run_id)
        current = (await handle.query("__temporal_workflow_metadata")).current_details
        assert "Needs a human" in current and f"billing-recon approve {run_id} --actor YOU" in current
        code, out, err = await cli(cli_env, "status", "--json")
        assert code == 0, err
        assert json.loads(out)["awaiting_approval"] >= 1  # this run (the dev server is shared)
        code, out, err = await cli(cli_env, "status")
        assert code == 0 and "(billing-recon runs --outcome awaiting_approval)" in out, err

        code, out, err = await cli(cli_env, "approve", run_id, "--actor", "alice", "--reason", "checked")
        assert code == 0, err
        await asyncio.wait_for(handle.result(), 60)
        await eventually_listed(temporal_env, "BillingOutcome = 'drift_fixed' AND BillingMode = 'plan'", run_id)
        assert run_id not in await listed(temporal_env, "BillingOutcome = 'awaiting_approval'")


async def test_a_failed_run_is_found_as_failed(temporal_env, postgres_dsn, emulator, task_queue, clean_db, cli_env):
    run_id = f"ui-failed-{uuid.uuid4().hex[:6]}"
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, _, err = await cli(cli_env, "reconcile", "--apply", "--customer", "nobody", "--id", run_id, "--wait")
        assert code == 2 and "unknown customer" in err.lower()
        handle = temporal_env.client.get_workflow_handle(run_id)
        current = (await handle.query("__temporal_workflow_metadata")).current_details
        assert "ReconcileUsage: failed" in current and "unknown customer" in current.lower()
    desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.FAILED
    await eventually_listed(temporal_env, "BillingOutcome = 'failed' AND BillingCustomerIds = 'nobody'", run_id)


async def test_temporal_setup_registers_the_search_attributes_idempotently(temporal_env, cli_env):
    namespace = f"ui-setup-{uuid.uuid4().hex[:6]}"
    await temporal_env.client.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=namespace, workflow_execution_retention_period={"seconds": 86400}))  # type: ignore[arg-type]
    env = {**cli_env, "TEMPORAL_NAMESPACE": namespace}
    code, out, err = await cli(env, "temporal", "setup")
    assert code == 0, err
    assert {line.removeprefix("added ") for line in out.splitlines() if line.startswith("added ")} == \
           {k.name for k in ui.SEARCH_ATTRIBUTES}
    code, out, err = await cli(env, "temporal", "setup")
    assert code == 0, err
    assert "added" not in out and out.count("already registered:") == len(ui.SEARCH_ATTRIBUTES)


async def test_children_of_a_backfill_carry_the_metadata_of_their_own_input_and_the_parents_correlation(
        temporal_env, postgres_dsn, emulator, task_queue, clean_db, stripe_client, cli_env):
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, with_counters=False)
    correlation = f"corr-bf-{world.tag}"
    env = {**cli_env, "BILLING_CORRELATION_ID": correlation}
    day = world.end.isoformat()
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        code, out, err = await cli(env, "backfill", "--start-date", day, "--end-date", day, "--customer",
                                   world.customer_ids[0], "--no-replay", "--no-resync", "--json")
        assert code == 0, err
        parent = json.loads(out)["workflow_id"]
        child = json.loads(out)["days"][0]["run_id"]
        # The parent's final details: generic, from its result's numbers.
        current = (await temporal_env.client.get_workflow_handle(parent).query(
            "__temporal_workflow_metadata")).current_details
        assert "CatchUpBackfill: completed" in current and "customers_scanned" in current
    for query in (f"BillingCorrelationId = '{correlation}' AND BillingRunKind = 'reconcile-usage'",
                  f"BillingCustomerIds = '{world.customer_ids[0]}' AND BillingMode = 'dry-run'"):
        await eventually_listed(temporal_env, query, child)
    await eventually_listed(temporal_env, f"BillingCorrelationId = '{correlation}' AND "
                                          "BillingRunKind = 'catch-up-backfill' AND BillingOutcome = 'completed'",
                            parent)
    desc = await temporal_env.client.get_workflow_handle(child).describe()
    assert (await desc.static_summary() or "").startswith(f"reconcile-usage dry-run · {day}..{day}")
    assert f"billing-recon report {child}" in (await desc.static_details() or "")


async def test_a_namespace_without_the_attributes_still_runs_everything(
        temporal_env, postgres_dsn, emulator, monkeypatch, caplog):
    """Before `temporal setup`: starts and schedules go without the attributes (one warning),
    summaries still show, and workflows never upsert what the namespace does not know."""
    monkeypatch.setattr(ui_interceptor, "_skip_attributes_until", 0.0)
    monkeypatch.setattr(ui_interceptor, "_warned_unregistered", False)
    namespace = f"ui-bare-{uuid.uuid4().hex[:6]}"
    await temporal_env.client.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=namespace, workflow_execution_retention_period={"seconds": 86400}))  # type: ignore[arg-type]
    monkeypatch.setenv("TEMPORAL_NAMESPACE", namespace)
    client = None
    for _ in range(50):  # a new namespace takes a moment to be served
        try:
            client = await connect(temporal_env.address)
            await client.list_workflows(limit=1).fetch_next_page()
            break
        except RPCError:
            await asyncio.sleep(0.2)
    assert client is not None
    task_queue = f"bare-{uuid.uuid4().hex[:6]}"
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        with caplog.at_level(logging.WARNING, logger="billing.ui"):
            handle = await client.start_workflow(Smoke.run, SmokeCheck(), id=f"smoke-{task_queue}",
                                                 task_queue=task_queue)
            await asyncio.wait_for(handle.result(), 60)
        assert [r.message for r in caplog.records if "billing-recon temporal setup" in r.message]
        desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.COMPLETED
        assert desc.typed_search_attributes.get(ui.RUN_KIND) is None
        assert (await desc.static_summary()) == "smoke"

        d = schedules.load()[0]
        d.name = f"bare-{task_queue}"
        assert await schedules.apply(client, [d], task_queue) == {d.name: "created"}
        await client.get_schedule_handle(d.schedule_id).delete()
