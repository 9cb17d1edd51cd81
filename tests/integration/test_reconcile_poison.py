"""Poison usage rows (stored before the ingestion contract's constraints, or by SQL that bypassed
it) never fail or wedge a run: a key holding one is reported as `invalid_usage` with the request
ids and skipped, every other key is reconciled, and nothing retries forever.

Before: NaN and Infinity made the day's sum NaN/Infinity and a comparison raised; 1e74 and
beyond overflowed the identifier's quantize. The page activity retried forever, and under the
schedules' overlap SKIP every later usage sync was skipped."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from common.types import Mode, RunStatus
from reconcile import activities
from tests.integration.recon_helpers import (
    assert_stripe_equals_ledger,
    insert_legacy_usage,
    ledger_by_key,
    make_settings,
    run,
    running_worker,
    seed_world,
    stripe_by_key,
)

pytestmark = pytest.mark.integration


async def test_poison_rows_are_reported_and_skipped_and_every_other_key_is_reconciled(
        clean_db, stripe_client, emulator, emulator_admin, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=4, days=2)
    c = world.customer_ids
    at = datetime.now(UTC) - timedelta(minutes=2)
    poison = [
        ("p-nan", c[0], "api_requests", "NaN"),
        ("p-inf", c[0], "storage_gb_hours", "Infinity"),
        ("p-ninf", c[1], "api_requests", "-Infinity"),
        ("p-e74", c[1], "storage_gb_hours", "1e74"),
        ("p-huge", c[2], "api_requests", "1e100000"),
        ("p-huge-2", c[2], "api_requests", "1e100000"),  # same key: one finding, both ids named
        ("p-gpu", c[3], "gpu_minutes", "NaN"),  # a meter Stripe does not have: its counter only
    ]
    await insert_legacy_usage(clean_db, [(rid, cust, meter, q, at) for rid, cust, meter, q in poison])
    bad_keys = {(cust, meter, at.date()) for _, cust, meter, _ in poison}
    # The application's own counter row is corrupt too: repaired like any drifted counter.
    await clean_db.execute("UPDATE billing.usage_counters SET value = 'NaN' WHERE customer_id = $1 "
                           "AND meter = 'api_requests'", c[3])
    counters_before = {tuple(r.values())[:3]: r["value"] for r in await clean_db.fetch(
        "SELECT customer_id, meter, period_start, value FROM billing.usage_counters")}

    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        result = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"poison-{world.tag}",
                           limit=90)

    assert result.status == RunStatus.COMPLETED, result
    assert result.counts.invalid_usage == len(bad_keys) == 6
    assert result.counts.reconcile_failures == 6
    rows = await clean_db.fetch(
        "SELECT customer_id, meter, usage_day, status, detail, ledger_value FROM billing.discrepancies "
        "WHERE run_id = $1 AND kind = 'invalid_usage' ORDER BY 1, 2", result.run_id)
    assert {(r["customer_id"], r["meter"], r["usage_day"]) for r in rows} == bad_keys
    assert {r["status"] for r in rows} == {"failed"} and {r["ledger_value"] for r in rows} == {None}
    details = {(r["customer_id"], r["meter"]): r["detail"] for r in rows}
    assert "2 usage row(s) not finite or beyond +-1E+15 (request ids: p-huge, p-huge-2)" in details[(c[2], "api_requests")]
    assert "request ids: p-nan)" in details[(c[0], "api_requests")]

    # Nothing was pushed for a poisoned key; every other key now agrees with Stripe.
    pushed_keys = {(r["customer_id"], r["meter"], r["usage_day"]) for r in await clean_db.fetch(
        "SELECT customer_id, meter, usage_day FROM billing.stripe_usage_pushes")}
    assert not pushed_keys & bad_keys
    ledger = await ledger_by_key(clean_db, world)
    stripe_values = await stripe_by_key(stripe_client, world)
    wrong = {k for k in ledger if k not in bad_keys and ledger[k] != stripe_values[k]}
    assert not wrong, wrong
    assert all(stripe_values[k] == 0 for k in bad_keys if k in stripe_values)
    # The counters of a poisoned period were left as they were (their true total is unknown).
    counters_after = {tuple(r.values())[:3]: r["value"] for r in await clean_db.fetch(
        "SELECT customer_id, meter, period_start, value FROM billing.usage_counters")}
    for cust, meter, day in bad_keys:
        key = (cust, meter, day.replace(day=1))
        assert counters_after.get(key) == counters_before.get(key), key
    nan_counter = [v for (cust, meter, _), v in counters_after.items() if cust == c[3] and meter == "api_requests"]
    assert nan_counter and all(v.is_finite() for v in nan_counter)
    assert sum(nan_counter) == sum(v for (cust, meter, _), v in ledger.items() if cust == c[3] and meter == "api_requests")

    # Fixed by hand (deleted), the next run reconciles those keys too.
    await clean_db.execute("DELETE FROM billing.usage_events WHERE request_id LIKE 'p-%'")
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        again = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"fixed-{world.tag}")
    assert again.status == RunStatus.COMPLETED and again.counts.invalid_usage == 0
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)


async def test_a_customer_whose_data_breaks_its_batch_is_skipped_and_the_page_goes_on(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue, monkeypatch):
    """The last line of defence, for a data error nothing else caught: the batch is retried
    customer by customer; the one that fails is reported (meter "*") and the others are
    reconciled in the same attempt. (The error is injected into the real worker's scan.)"""
    world = await seed_world(clean_db, stripe_client, n_customers=3, days=1)
    bad = world.customer_ids[1]
    real = activities.plan_batch

    def plan_batch(rows, summaries, policy):
        if any(c.customer_id == bad for c in rows.customers):
            raise decimal.InvalidOperation("[<class 'decimal.InvalidOperation'>]")
        return real(rows, summaries, policy)

    monkeypatch.setattr(activities, "plan_batch", plan_batch)
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        result = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"isolate-{world.tag}")
    assert result.status == RunStatus.COMPLETED
    assert result.counts.invalid_usage == 1 and result.counts.customers_scanned == 3
    row = await clean_db.fetchrow(
        "SELECT customer_id, meter, status, detail FROM billing.discrepancies WHERE run_id = $1 "
        "AND kind = 'invalid_usage'", result.run_id)
    assert (row["customer_id"], row["meter"], row["status"]) == (bad, "*", "failed")
    assert "InvalidOperation" in row["detail"]
    world.customers = [x for x in world.customers if x[0] != bad]
    await assert_stripe_equals_ledger(clean_db, stripe_client, world)


async def test_a_data_error_every_customer_hits_fails_the_run_once_instead_of_retrying(
        clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue, monkeypatch):
    world = await seed_world(clean_db, stripe_client, n_customers=2, days=1)

    def plan_batch(rows, summaries, policy):
        raise decimal.Overflow("[<class 'decimal.Overflow'>]")

    monkeypatch.setattr(activities, "plan_batch", plan_batch)
    async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
        with pytest.raises(WorkflowFailureError) as err:
            await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY), f"systemic-{world.tag}")
        handle = temporal_env.client.get_workflow_handle(f"systemic-{world.tag}")
        attempts = [e.activity_task_started_event_attributes.attempt async for e in handle.fetch_history_events()
                    if e.HasField("activity_task_started_event_attributes")]
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidData" and cause.non_retryable
    assert "every customer of a batch failed on its data" in cause.message
    assert max(attempts) == 1  # no activity was retried
    run_row = await clean_db.fetchrow("SELECT status, error FROM billing.reconciliation_runs WHERE run_id = $1",
                                      f"systemic-{world.tag}")
    assert run_row["status"] == "failed" and "Overflow" in run_row["error"]
    assert await clean_db.fetchval("SELECT count(*) FROM billing.stripe_usage_pushes") == 0
