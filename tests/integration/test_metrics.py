"""The worker's Prometheus endpoint, scraped like Prometheus would, around real runs: a real
`python -m worker` process (METRICS_BIND_ADDRESS on a free port), the dev server, Postgres and
the emulator.

After an apply run that finds and fixes drift: the last-success gauge holds the run's finish
time, the last run's drift figures and diff gauges are non-zero, the per-process counters count
the run and its findings, Stripe requests are counted by status, and the Temporal SDK's own
metrics are on the same endpoint. After a worker restart the Postgres-derived figures are all
still there (the per-process counters start again, as Prometheus counters do). Also: every
metric the project declares is exported, audit rows carry the run's correlation id, and JSON logs
carry workflow id, run id and correlation id.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from billing import metrics
from common.types import Mode, RunStatus
from devstack.processes import free_port
from reconcile.types import ReconcileResult
from tests.deploy_helpers import deploy_metric_names
from tests.integration.cli_helpers import cli

from .metrics_helpers import scrape, value
from .recon_helpers import inject_all_drift, run, seed_world
from .worker_helpers import spawn_worker, stop_worker

pytestmark = pytest.mark.integration

async def wait_scrape(address: str, ready, log: Path, limit: float = 30.0):
    """Scrape until `ready(samples)` (the collector refreshes every second here)."""
    deadline = time.monotonic() + limit
    last: list = []
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(scrape, address)
            if ready(last):
                return last
        except OSError:
            pass
        await asyncio.sleep(0.3)
    tail = (await asyncio.to_thread(log.read_text))[-3000:]
    raise AssertionError(f"metrics not ready within {limit}s; worker log:\n{tail}")


async def test_metrics_after_a_drift_run_and_after_a_worker_restart(
    clean_db, stripe_client, emulator, emulator_admin, temporal_env, task_queue, postgres_dsn, tmp_path,
):
    world = await seed_world(clean_db, stripe_client, n_customers=6)
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
        "TEMPORAL_ADDRESS": temporal_env.address, "TEMPORAL_NAMESPACE": temporal_env.namespace,
        "BILLING_TASK_QUEUE": task_queue, "STRIPE_RATE_LIMIT": "0", "RECON_SETTLE_SECONDS": "1",
        "METRICS_BIND_ADDRESS": address, "METRICS_REFRESH_SECONDS": "0.5", "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "worker.log"
    worker = spawn_worker(env, log)
    client = temporal_env.client
    try:
        await wait_scrape(address, lambda s: value(s, metrics.COLLECTOR_REFRESH) is not None, log)
        # Sync first (everything is unpushed usage), then drift of every kind, then heal it.
        sync = await run(client, task_queue, world.request(mode=Mode.APPLY), f"metrics-sync-{world.tag}")
        assert sync.status == RunStatus.COMPLETED
        await inject_all_drift(clean_db, stripe_client, world)
        # Heal it from the CLI, as an operator would, passing a correlation id of our own.
        cid = f"corr-{world.tag}"
        cli_env = {**env, "BILLING_CORRELATION_ID": cid, "COLUMNS": "200"}
        customers = [a for c in world.customer_ids for a in ("--customer", c)]
        code, out, err = await cli(
            cli_env, "reconcile", "--apply", "--auto-approve", "--start-date", str(world.start),
            "--end-date", str(world.end), *customers, "--settle-seconds", "1", "--wait", "--json",
            "--id", f"metrics-heal-{world.tag}")
        assert code == 0, err
        heal = ReconcileResult.model_validate(json.loads(out) | {"window_start": world.start,
                                                                 "window_end": world.end})
        assert json.loads(out)["correlation_id"] == cid
        assert heal.status == RunStatus.COMPLETED and heal.counts.drift_count > 0
        finished = await clean_db.fetchval(
            "SELECT extract(epoch FROM finished_at)::float8 FROM billing.reconciliation_runs WHERE run_id = $1",
            heal.run_id)

        def healed(s) -> bool:
            ts = value(s, metrics.LAST_SUCCESS, kind="usage")
            return ts is not None and abs(ts - finished) < 1e-3

        s = await wait_scrape(address, healed, log)
        self_check_postgres_figures(s, heal)
        # Per-process counters of this worker: two runs, their drift and findings.
        assert value(s, "billing_reconciliation_runs_total", kind="usage", mode="apply", status="completed") == 2
        assert value(s, "billing_reconciliation_drift_total", kind="usage") == sync.counts.drift_count + heal.counts.drift_count
        assert value(s, "billing_reconciliation_dedupe_total", kind="usage") >= 3
        assert value(s, "billing_reconciliation_over_quota_transitions_total", kind="usage") >= 1
        assert value(s, "billing_reconciliation_discrepancies_total", kind="lost_push") >= 1
        assert value(s, "billing_reconciliation_discrepancies_total", kind="counter_drift", action="set_counter") >= 1
        assert value(s, "billing_reconciliation_duration_seconds_count", kind="usage") == 2
        # Stripe requests by operation and HTTP status.
        assert value(s, "billing_stripe_requests_total", operation="create_meter_event", status="200") >= 1
        assert value(s, "billing_stripe_requests_total", operation="meter_event_summaries", status="200") >= 1
        assert value(s, "billing_stripe_request_duration_seconds_count", operation="list_meters") >= 1
        # The Temporal SDK's metrics on the same endpoint.
        assert any(n.startswith("temporal_") for n, _, _ in s)
        assert value(s, "temporal_activity_execution_latency_count") is not None
        # Every metric we declare is exported (the alert rules and the dashboard rely on it);
        # those only a webhook receiver or a 429 produces are checked in test_observability.
        names = {n for n, _, _ in s}
        not_here = {f"{metrics.WEBHOOK_RECEIVED}_total", f"{metrics.WEBHOOK_PROCESSED}_total",
                    f"{metrics.STRIPE_RETRIES}_total",
                    f"{metrics.NOTIFICATIONS}_total"}  # a delivery attempt: tests/integration/test_notify_*.py
        assert metrics.exported_names() - names - not_here == set()
        # ... and so is every metric the alert rules and the dashboard name (Temporal's too).
        assert deploy_metric_names() - names - not_here == set()

        # The correlation id reached the run row and every audit row of the run.
        assert await clean_db.fetchval(
            "SELECT correlation_id FROM billing.reconciliation_runs WHERE run_id = $1", heal.run_id) == cid
        audit = await clean_db.fetch(
            "SELECT DISTINCT correlation_id FROM billing.audit_log WHERE workflow_id = $1", heal.run_id)
        assert [r["correlation_id"] for r in audit] == [cid]
        # JSON logs carry workflow id, run id and correlation id.
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        mine = [x for x in lines if x.get("workflow_id") == heal.run_id]
        assert mine and all(x.get("correlation_id") == cid and x.get("run_id") for x in mine), lines[-5:]
        # `billing-recon runs` shows the run with its correlation id.
        code, out, err = await cli(cli_env, "runs", "--json")
        assert code == 0, err
        assert {(r["run_id"], r["correlation_id"]) for r in json.loads(out)} >= {(heal.run_id, cid)}

        # Restart the worker: the Postgres-derived figures come back unchanged.
        stop_worker(worker)
        worker = spawn_worker(env, log)
        s = await wait_scrape(address, lambda s: value(s, metrics.COLLECTOR_REFRESH) is not None, log)
        assert value(s, metrics.LAST_SUCCESS, kind="usage") == pytest.approx(finished, abs=1e-3)
        self_check_postgres_figures(s, heal)
        assert value(s, "billing_reconciliation_runs_total") is None  # a new process counts anew
    finally:
        stop_worker(worker)


def self_check_postgres_figures(s, heal) -> None:
    assert value(s, metrics.LAST_RUN, kind="usage", figure="drift_count") == heal.counts.drift_count > 0
    assert value(s, metrics.LAST_RUN, kind="usage", figure="over_quota_transitions") >= 1
    assert value(s, metrics.DIFF_ABS, kind="usage", against="stripe") > 0
    assert value(s, metrics.DIFF_ABS, kind="usage", against="counter") > 0
    assert value(s, metrics.DIFF_PCT, kind="usage") > 0
    assert value(s, metrics.EPSILON) == pytest.approx(0.005)
    assert value(s, metrics.WEBHOOK_BACKLOG, status="received") == 0
    assert value(s, metrics.PAUSED) == 0
