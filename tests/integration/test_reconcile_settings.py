"""Reconciliation settings and a run's policy overrides are bounded where they enter: the
environment (`RECON_*`, read by the CLI and the worker) and the workflow input (raw JSON from
`temporal workflow start`). Out of bounds is a one-line startup error, or a run that fails at once,
non-retryably, before it reads or writes anything: never a run that "completes" having scanned
nobody (page size 0) or retries forever (page size -1)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from devstack.components import find_temporal_binary
from tests.integration.recon_helpers import make_settings, running_worker, seed_world
from tests.integration.worker_helpers import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("raw_input", [
    {"mode": "apply", "settle_seconds": -5},
    {"mode": "apply", "settle_seconds": 999_999_999_999},
    {"mode": "apply", "page_size": 0},
    {"mode": "apply", "epsilon": "1.5"},
], ids=["settle-negative", "settle-huge", "page-size-0", "epsilon-1.5"])
async def test_out_of_bounds_workflow_input_fails_at_once_and_pushes_nothing(
        raw_input, temporal_env, postgres_dsn, emulator, emulator_admin, task_queue, clean_db, stripe_client):
    """Started by the `temporal` CLI itself, with a worker ready and usage that an apply run
    would push: the run fails with the validation message, non-retryably, and nothing at all is
    written (no run row, no outbox row, no audit row, no meter event)."""
    world = await seed_world(clean_db, stripe_client, n_customers=2, days=1, with_counters=False)
    workflow_id = f"bounds-{world.tag}"
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        proc = await asyncio.create_subprocess_exec(
            find_temporal_binary(), "workflow", "start", "--address", temporal_env.address,
            "--namespace", temporal_env.namespace, "--task-queue", task_queue, "--type", "ReconcileUsage",
            "--workflow-id", workflow_id, "--input", json.dumps({**raw_input, "customers": world.customer_ids}),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        handle = temporal_env.client.get_workflow_handle(workflow_id)
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(handle.result(), 30)
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ValidationError" and cause.non_retryable
    assert next(iter(raw_input.keys() - {"mode"})) in cause.message
    assert (await handle.describe()).status.name == "FAILED"
    for table in ("reconciliation_runs", "stripe_usage_pushes", "audit_log", "discrepancies"):
        assert await clean_db.fetchval(f"SELECT count(*) FROM billing.{table}") == 0, table
    assert await emulator_admin.meter_events() == []


def _run(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra, "COLUMNS": "40", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("name", "value", "bound"), [
    ("RECON_PAGE_SIZE", "0", "greater than or equal to 1"),
    ("RECON_PAGE_SIZE", "-1", "greater than or equal to 1"),
    ("RECON_SETTLE_SECONDS", "-5", "greater than or equal to 0"),
    ("RECON_EPSILON", "2", "less than 1"),
    ("RECON_STRIPE_CONCURRENCY", "0", "greater than or equal to 1"),
])
def test_out_of_bounds_setting_stops_the_cli_and_the_worker_with_one_line(name, value, bound, postgres_dsn):
    """Every entry point refuses to start (the one startup error of every invalid setting)."""
    expected = f"invalid settings: {name}: Input should be {bound} (got '{value}')"
    env = {name: value, "DATABASE_URL": postgres_dsn, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    cli = _run(env, "-c", "from starter.cli import main; main()", "reconcile", "--apply")
    worker = _run(env, "-m", "worker")
    for res in (cli, worker):
        assert res.returncode == 1, res
        assert res.stderr == expected + "\n", res.stderr
