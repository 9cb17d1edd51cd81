"""Daily checks on the real stack (dev server, embedded Postgres, emulator, `billing-recon` in a
subprocess): clean, they pass; an event in Stripe missing from the inbox and a counter no
reconciliation covered for days make exactly those checks fail, named; fixed, they pass again."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from billing.stripe_gateway import StripeGateway, make_stripe_client
from checks import store
from checks.activities import CheckActivities
from checks.types import CheckItem, CheckName, CheckRequest, CheckResult, RecordChecksInput
from common import ui
from reconcile.types import ReconcileResult
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, run, running_worker, seed_world

pytestmark = pytest.mark.integration

# No grace: the test's events and usage are seconds old.
FAST = ("--grace-minutes", "0", "--backlog-minutes", "1", "--webhook-days", "2")


async def outcome(client, workflow_id: str) -> str | None:
    """The run's BillingOutcome search attribute (upserted by the worker as the run ends)."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    return desc.typed_search_attributes.get(ui.OUTCOME)


def by_check(doc: dict) -> dict[str, dict]:
    return {c["check"]: c for c in doc["checks"]}


async def test_checks_pass_clean_and_name_a_webhook_gap_and_a_stale_counter(
        cli_env, clean_db, stripe_client, emulator, postgres_dsn, temporal_env, task_queue):
    world = await seed_world(clean_db, stripe_client, n_customers=2, days=2, events_per_key=1,
                             meters={"api_requests": "API requests"})
    (c0, _), (c1, _) = world.customers
    client = temporal_env.client
    async with running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        done: ReconcileResult = await run(client, task_queue, world.request(mode="apply"), f"recon-{world.tag}")
        assert done.status.value == "completed"
        # Every Stripe event so far into the inbox, through the same handlers as a delivery.
        code, _, err = await cli(cli_env, "replay-webhooks", "--apply", "--days", "1", "--json")
        assert code == 0, err

        code, out, err = await cli(cli_env, "checks", "--json", *FAST)
        clean = json.loads(out)
        assert code == 0, (out, err)
        assert clean["passed"] is True and {c["check"] for c in clean["checks"] if c["passed"]} == {
            "active_subscriptions", "webhook_gaps", "usage_without_counter", "stale_counters", "inbox_backlog"}
        assert by_check(clean)["webhook_gaps"]["figures"]["stripe_events"] > 0  # it did compare something
        assert by_check(clean)["stale_counters"]["figures"]["checked"] == 2  # one counter per customer
        assert await outcome(client, clean["run_id"]) == "clean"  # BillingOutcome in the Temporal UI

        # Injected: an event Stripe has and the inbox never got; reconciliation stopped 3 days ago
        # and since then only c0 was reconciled.
        lost = await stripe_client.v1.customers.create_async(params={"name": "never delivered"})
        lost_event = (await stripe_client.v1.events.list_async(params={"type": "customer.created", "limit": 1})).data[0]
        assert lost_event.data.object["id"] == lost.id
        three_days_ago = datetime.now(UTC) - timedelta(days=3)
        await clean_db.execute(
            "UPDATE billing.reconciliation_runs SET started_at = $1, finished_at = $1", three_days_ago)
        await run(client, task_queue, world.request(mode="apply", customers=[c0]), f"recon-c0-{world.tag}")

        code, out, err = await cli(cli_env, "checks", "--json", *FAST)
        found = json.loads(out)
        assert code == 1, (out, err)
        checks = by_check(found)
        assert found["passed"] is False
        assert await outcome(client, found["run_id"]) == "needs_attention"
        assert {c for c, r in checks.items() if not r["passed"]} == {"webhook_gaps", "stale_counters"}
        gap = checks["webhook_gaps"]
        day = datetime.fromtimestamp(lost_event.created, tz=UTC).date()
        assert gap["findings"] == 1
        assert [(i["key"], lost_event.id in i["detail"]) for i in gap["items"]] == [
            (f"{day} customer.created", True)]
        stale = checks["stale_counters"]
        assert stale["findings"] == 1 and stale["figures"] == {"stale": 1, "checked": 2, "days": 2}
        [item] = stale["items"]
        assert item["key"].startswith(f"{c1} api_requests ")
        assert f"last reconciled {three_days_ago:%Y-%m-%d %H:%M} UTC" in item["detail"]

        # The last result is durable: `checks --last`, `status` and the gauges (store.last_results) read it.
        code, out, _ = await cli(cli_env, "checks", "--last")
        assert code == 1 and f"{day} customer.created" in out and "failed: stale_counters, webhook_gaps" in out
        code, out, _ = await cli(cli_env, "status", "--json")
        failing = {c["check"] for c in json.loads(out)["daily_checks"] if not c["passed"]}
        assert failing == {"webhook_gaps", "stale_counters"}
        async with clean_db.acquire() as conn:
            last = {r["check_name"]: r for r in await store.last_results(conn)}
        assert last["webhook_gaps"]["findings"] == 1 and last["inbox_backlog"]["passed"]

        # Fixed the way the runbooks say: replay the window, reconcile; the checks pass again.
        code, _, err = await cli(cli_env, "replay-webhooks", "--apply", "--days", "1")
        assert code == 0, err
        await run(client, task_queue, world.request(mode="apply"), f"recon-all-{world.tag}")
        code, out, err = await cli(cli_env, "checks", *FAST)
        assert code == 0, (out, err)
        assert "all checks passed" in out


async def test_checks_refuse_bad_input_and_last_without_results(cli_env, clean_db):
    code, _, err = await cli(cli_env, "checks", "--webhook-days", "31")
    assert code == 2 and "--webhook-days" in err
    code, _, err = await cli(cli_env, "checks", "--last")
    assert code == 1 and "no daily checks result stored yet" in err


async def test_the_event_listing_resumes_from_its_heartbeat_without_counting_twice(
        postgres_dsn, emulator, stripe_client, clean_db):
    """A retried webhook_gaps activity (worker killed after a page) goes on from Stripe's cursor
    with the tallies it had heartbeated: every event counted once."""
    for i in range(3):
        await stripe_client.v1.customers.create_async(params={"name": f"resume-{i}"})
    total = len((await stripe_client.v1.events.list_async(params={"limit": 100})).data)
    gateway = StripeGateway(make_stripe_client(make_settings(postgres_dsn, emulator)), None)
    acts = CheckActivities(clean_db, gateway, make_settings(postgres_dsn, emulator))
    req = CheckRequest(now=datetime.now(UTC) + timedelta(seconds=1), run_id="resume-test", grace_minutes=0,
                       webhook_days=1, page_size=1)
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    whole = await env.run(acts.webhook_gaps, req)
    assert whole.findings == whole.figures["stripe_events"] == total >= 3

    after_first = next(b for b in beats if b["starting_after"])
    assert sum(t["stripe"] for t in after_first["tallies"].values()) == 1
    env.info = dataclasses.replace(env.info, heartbeat_details=[after_first])
    resumed = await env.run(acts.webhook_gaps, req)
    assert resumed == whole
    # Only the types the endpoint subscribes to: the others are not gaps.
    env.info = dataclasses.replace(env.info, heartbeat_details=[])
    only = await env.run(acts.webhook_gaps, req.model_copy(update={"webhook_types": ["customer.*"]}))
    assert {i.key.split()[1] for i in only.items} == {"customer.created"} and only.findings == 3


async def test_recording_a_run_again_keeps_one_result_per_check(clean_db):
    """`checks.record` retried (its first attempt committed, the answer was lost) stores the same
    rows, not two of each."""
    now = datetime.now(UTC)
    results = [CheckResult(check=name, passed=name != CheckName.INBOX_BACKLOG, summary=str(name),
                           findings=int(name == CheckName.INBOX_BACKLOG), figures={"n": 1.5},
                           items=[CheckItem(key="k", detail="d")]) for name in CheckName]
    inp = RecordChecksInput(run_id="checks-retried", workflow_run_id="r1", started_at=now, finished_at=now,
                            results=results)
    async with clean_db.acquire() as conn:
        await store.record_results(conn, inp)
        await store.record_results(conn, inp)
        assert await conn.fetchval("SELECT count(*) FROM billing.daily_check_results") == len(CheckName)
        run = await conn.fetchrow("SELECT passed, failed_checks FROM billing.daily_check_runs")
        assert (run["passed"], run["failed_checks"]) == (False, ["inbox_backlog"])
        assert [store.to_result(r) for r in await store.last_results(conn)] == sorted(results, key=lambda r: r.check)


async def test_subscription_usage_and_inbox_checks_against_postgres_and_stripe(
        postgres_dsn, emulator, stripe_client, clean_db):
    """The three other checks' activities on the real database and emulator."""
    settings = make_settings(postgres_dsn, emulator)
    acts = CheckActivities(clean_db, StripeGateway(make_stripe_client(settings), None), settings)
    env = ActivityEnvironment()
    cus = await stripe_client.v1.customers.create_async(params={"name": "subs"})
    product = await stripe_client.v1.products.create_async(params={"name": "plan"})
    price = await stripe_client.v1.prices.create_async(params={
        "product": product.id, "currency": "usd", "unit_amount": 100, "recurring": {"interval": "month"}})
    sub = (await stripe_client.v1.subscriptions.create_async(
        params={"customer": cus.id, "items": [{"price": price.id}]})).id

    def req(**kw: Any) -> CheckRequest:
        return CheckRequest(now=datetime.now(UTC) + timedelta(seconds=1), run_id="activities-test",
                            **{"grace_minutes": 0, **kw})

    # Scratch rows an earlier, failed attempt of this run left behind: a fresh attempt drops them.
    await clean_db.execute("INSERT INTO billing.run_seen (run_id, kind, key) VALUES ($1, $2, 'sub_stale')",
                           "activities-test", store.SEEN_ACTIVE)
    missing = await env.run(acts.active_subscriptions, req())
    assert (missing.passed, [(i.key, i.detail) for i in missing.items]) == (
        False, [(sub, "active in Stripe; missing from billing.subscriptions")])
    local = """INSERT INTO billing.subscriptions (stripe_subscription_id, stripe_customer_id, status)
               VALUES ($1, $2, $3) ON CONFLICT (stripe_subscription_id) DO UPDATE SET status = $3"""
    await clean_db.execute(local, sub, cus.id, "active")
    assert (await env.run(acts.active_subscriptions, req())).passed
    await clean_db.execute(local, sub, cus.id, "canceled")
    await clean_db.execute(local, "sub_ghost", cus.id, "active")
    differ = await env.run(acts.active_subscriptions, req())
    assert differ.figures == {"local": 1, "stripe": 1, "only_local": 1, "only_stripe": 1}
    assert [(i.key, i.detail) for i in differ.items] == [
        (sub, "active in Stripe; canceled in billing.subscriptions"),
        ("sub_ghost", "active in billing.subscriptions, not active in Stripe")]
    assert await clean_db.fetchval("SELECT count(*) FROM billing.run_seen") == 0  # scratch rows removed

    # Usage ingested 2 hours ago with no counter; another customer's has its counter.
    await clean_db.execute("INSERT INTO billing.customers (customer_id) VALUES ('nocounter'), ('counted')")
    now = datetime.now(UTC)
    for cid in ("nocounter", "counted"):
        await clean_db.execute(
            "INSERT INTO billing.usage_events (request_id, customer_id, meter, quantity, occurred_at, ingested_at) "
            "VALUES ($1, $2, 'api_requests', 3, $3, $3)", f"r-{cid}", cid, now - timedelta(hours=2))
    await clean_db.execute(
        "INSERT INTO billing.usage_counters (customer_id, meter, period_start, period_end, value) "
        "VALUES ('counted', 'api_requests', date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC')::date, "
        "(date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC') + interval '1 month')::date, 3)",
        now - timedelta(hours=2))
    usage = await env.run(acts.usage_without_counter, req())
    assert not usage.passed and [i.key.split()[:2] for i in usage.items] == [["nocounter", "api_requests"]]
    # Within the grace period (usage sync still to come): not counted.
    assert (await env.run(acts.usage_without_counter, req(grace_minutes=180))).passed

    # The inbox: a failed event from 3 hours ago is a backlog; one received a minute ago is not.
    for evt, status, age in (("evt_old_failed", "failed", timedelta(hours=3)),
                             ("evt_fresh", "received", timedelta(minutes=1))):
        await clean_db.execute(
            "INSERT INTO billing.stripe_events (event_id, type, created, payload, status, received_at, attempts, "
            "error) VALUES ($1, 'invoice.paid', $2, '{}'::jsonb, $3, $2, 2, 'boom')", evt, now - age, status)
    backlog = await env.run(acts.inbox_backlog, req(backlog_minutes=60))
    assert (backlog.passed, backlog.figures["failed"], backlog.figures["received"]) == (False, 1, 0)
    assert [i.key for i in backlog.items] == ["evt_old_failed"] and "boom" in backlog.items[0].detail


async def test_a_run_with_failed_checks_notifies_once(clean_db, postgres_dsn, emulator):
    """`checks.record` records one `daily_check_failed` notification per run with failed checks
    (notify/), in the results' transaction; recorded again (a retry), still one; all passed: none."""
    now = datetime.now(UTC)
    settings = make_settings(postgres_dsn, emulator)
    acts = CheckActivities(clean_db, StripeGateway(make_stripe_client(settings), None), settings)
    results = [CheckResult(check=name, passed=name != CheckName.STALE_COUNTERS, summary=f"{name} summary",
                           findings=int(name == CheckName.STALE_COUNTERS)) for name in CheckName]
    failing = RecordChecksInput(run_id="checks-failing", workflow_run_id="r1", started_at=now, finished_at=now,
                                results=results)
    passing = RecordChecksInput(run_id="checks-passing", workflow_run_id="r2", started_at=now, finished_at=now,
                                results=[r.model_copy(update={"passed": True, "findings": 0}) for r in results])
    env = ActivityEnvironment()
    for inp in (failing, failing, passing):
        await env.run(acts.record, inp)
    rows = await clean_db.fetch("SELECT kind, subject, body FROM billing.notifications")
    assert [(r["kind"], r["subject"]) for r in rows] == [("daily_check_failed", "checks-failing@r1")]
    body = rows[0]["body"]
    assert body["title"] == "Daily checks: 1 failed (stale_counters)"
    assert body["fields"] == {"stale_counters": "stale_counters summary"}
    assert "billing-recon checks --last" in body["commands"]
