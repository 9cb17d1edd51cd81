"""One Stripe budget for every worker (billing/budget.py, migration 0020): three gateways with
pools of their own (three workers) share the account's limit, changes reach them at run time,
and `billing-recon budget show | set`."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from decimal import Decimal

import asyncpg
import pytest

from billing.budget import StripeBudget
from billing.stripe_gateway import StripeGateway, make_stripe_client
from common.types import Mode, RunStatus

from .cli_helpers import cli
from .recon_helpers import make_settings, run, running_worker, seed_world

WORKERS = 3


async def _set(conn: asyncpg.Pool, *, account: float, share: float, endpoint: tuple[str, float] | None = None) -> None:
    await conn.execute("INSERT INTO billing.stripe_budget_settings (id, reserved_share) VALUES (true, $1) "
                       "ON CONFLICT (id) DO UPDATE SET reserved_share = excluded.reserved_share", share)
    rows = [("account", account), *([endpoint] if endpoint else [])]
    for bucket, limit in rows:
        await conn.execute("INSERT INTO billing.stripe_budget (bucket, ops_per_second) VALUES ($1, $2) "
                           "ON CONFLICT (bucket) DO UPDATE SET ops_per_second = excluded.ops_per_second", bucket, limit)


async def _used(pool: asyncpg.Pool, bucket: str) -> list[int]:
    return [r["used"] for r in await pool.fetch(
        "SELECT used FROM billing.stripe_budget_usage WHERE bucket = $1 ORDER BY second", bucket)]


async def test_three_workers_on_one_budget_stay_under_it(clean_db, postgres_dsn, emulator, emulator_admin):
    """Each gateway alone would send as fast as the emulator answers; together they never pass
    the account's limit in any second of wall time, and Stripe (the emulator, limited to
    exactly that) answers no 429."""
    settings = make_settings(postgres_dsn, emulator, STRIPE_MAX_NETWORK_RETRIES=0)
    pools = [await asyncpg.create_pool(postgres_dsn, min_size=2, max_size=2) for _ in range(WORKERS)]
    try:
        gateways = [StripeGateway(make_stripe_client(settings), None, StripeBudget(p)) for p in pools]
        # Warm: each worker's first connection to Stripe is made before the measured burst (a
        # cold connect can hold a request past its second and bunch it with the next one's).
        await asyncio.gather(*(g.list_meters() for g in gateways))
        await _set(clean_db, account=10, share=0.2)  # ours: 8/s
        await clean_db.execute("DELETE FROM billing.stripe_budget_usage")
        await emulator_admin.configure(rate_limit=10, endpoint_rate_limit=10)
        await emulator_admin.reset_request_log()
        await asyncio.gather(*(g.list_meters() for g in gateways for _ in range(10)))
        assert sum(g.rate_limit_retries for g in gateways) == 0
    finally:
        await emulator_admin.configure(rate_limit=0)
        for p in pools:
            await p.close()
    # What the budget promises, exactly: at most our 8 places in any second of (Postgres') wall time.
    placed = await _used(clean_db, "account")
    assert sum(placed) == WORKERS * 10 and max(placed) <= 8, placed
    log = await emulator_admin.request_log(route="GET /v1/billing/meters")
    # Stripe (the emulator, limited to exactly 10/s) refused nothing.
    assert len(log) == WORKERS * 10 and {status for _, _, status, _ in log} == {200}
    # As Stripe saw them: a request placed late in a second can arrive in the next one (a first
    # connection, a busy machine), so a second of arrivals may hold a few more than its places;
    # any two seconds together stay within twice the limit.
    per_second = Counter(int(at) for at, *_ in log)
    pairs = [per_second[t] + per_second[t + 1] for t in range(min(per_second), max(per_second) + 1)]
    assert max(pairs) <= 20, per_second
    # Our share (8/s), not the three workers' sum: the budget is kept per second of wall time, so
    # the requests need as many seconds as 8 a second allows (a mean over the span can pass 8 when
    # the first second's slots fall at its end: that is still 8 in that second).
    seconds_touched = int(log[-1][0]) - int(log[0][0]) + 1
    assert len(log) <= 8 * seconds_touched, (len(log), seconds_touched)


async def test_an_endpoint_bucket_and_a_change_at_run_time(clean_db):
    """A request waits for a second where both its endpoint and the account have room; another
    endpoint is not queued behind a full one; a changed limit holds from the next request."""
    await _set(clean_db, account=100, share=0.0, endpoint=("meter_event_summaries", 4))
    await clean_db.execute("DELETE FROM billing.stripe_budget_usage")
    waits = [await clean_db.fetchval("SELECT billing.stripe_budget_slot('meter_event_summaries')") for _ in range(9)]
    assert await _used(clean_db, "meter_event_summaries") == [4, 4, 1]  # per second of wall time
    assert waits[-1] > 1.0  # the ninth waits for the third second
    other = await clean_db.fetchval("SELECT billing.stripe_budget_slot('list_meters')")
    assert other < 0.5  # the account has room now: list_meters is not behind the summaries
    await clean_db.execute("UPDATE billing.stripe_budget SET ops_per_second = 1 WHERE bucket = 'meter_event_summaries'")
    await clean_db.execute("DELETE FROM billing.stripe_budget_usage")
    for _ in range(3):
        await clean_db.fetchval("SELECT billing.stripe_budget_slot('meter_event_summaries')")
    assert await _used(clean_db, "meter_event_summaries") == [1, 1, 1]  # one a second
    taken = await clean_db.fetchval("SELECT taken FROM billing.stripe_budget WHERE bucket = 'account'")
    assert taken == 13


async def test_a_lane_holds_its_share_of_the_endpoint_beside_other_callers(clean_db):
    """The read-back's lane: at most floor(endpoint limit x share) of its requests a second,
    while callers outside the lane still fill the endpoint up to its own limit."""
    await _set(clean_db, account=100, share=0.0, endpoint=("meter_event_summaries", 8))
    await clean_db.execute("DELETE FROM billing.stripe_budget_usage")
    lane = "SELECT billing.stripe_budget_slot('meter_event_summaries', 'readback', 0.25)"
    for _ in range(5):  # 2 a second in the lane (8 x 0.25)
        await clean_db.fetchval(lane)
    assert await _used(clean_db, "readback:meter_event_summaries") == [2, 2, 1]
    for _ in range(6):  # the endpoint's other callers take its 6 free places of the first second
        await clean_db.fetchval("SELECT billing.stripe_budget_slot('meter_event_summaries')")
    assert (await _used(clean_db, "meter_event_summaries"))[0] == 8
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await clean_db.fetchval("SELECT billing.stripe_budget_slot('meter_event_summaries', 'readback', 0)")


async def test_live_meter_events_have_their_own_bucket(clean_db, cli_env):
    """Live mode: meter events are limited by their own bucket (1,000/s), not the account's; set
    with `budget set --own-bucket`, audited, undone with --in-account."""
    await _set(clean_db, account=4, share=0.0)
    code, out, err = await cli(cli_env, "budget", "set", "--endpoint", "create_meter_event=100", "--own-bucket",
                               "create_meter_event", "--reason", "live mode", "--actor", "alice", "--json")
    assert code == 0, err
    assert [b["own_bucket"] for b in json.loads(out)["buckets"] if b["bucket"] == "create_meter_event"] == [True]
    await clean_db.execute("DELETE FROM billing.stripe_budget_usage")
    for _ in range(20):  # far past the account's 4 a second: all in the first second
        await clean_db.fetchval("SELECT billing.stripe_budget_slot('create_meter_event')")
    assert await _used(clean_db, "create_meter_event") == [20] and await _used(clean_db, "account") == []
    assert await clean_db.fetchval("SELECT billing.stripe_budget_slot('list_meters')") < 0.5  # account untouched
    code, _, err = await cli(cli_env, "budget", "set", "--in-account", "create_meter_event", "--reason", "test mode")
    assert code == 0, err
    await clean_db.execute("DELETE FROM billing.stripe_budget_usage")
    for _ in range(8):
        await clean_db.fetchval("SELECT billing.stripe_budget_slot('create_meter_event')")
    assert await _used(clean_db, "account") == [4, 4]  # counted in the account's 4 a second again
    code, _, err = await cli(cli_env, "budget", "set", "--own-bucket", "x", "--in-account", "x", "--reason", "r")
    assert code == 2 and "both" in err


async def test_a_small_pool_does_not_deadlock_on_budget_slots(clean_db, stripe_client, emulator, postgres_dsn,
                                                             temporal_env, task_queue):
    """Corrections hold a pool connection (their key's lock) while they wait for Stripe slots:
    the budget's own connections keep DATABASE_POOL_MAX=2 from waiting on itself."""
    world = await seed_world(clean_db, stripe_client, n_customers=6, days=1)
    settings = make_settings(postgres_dsn, emulator, STRIPE_BUDGET="shared", DATABASE_POOL_MAX=2)
    async with running_worker(temporal_env.client, settings, task_queue):
        result = await run(temporal_env.client, task_queue, world.request(mode=Mode.APPLY),
                           f"small-pool-{world.tag}", limit=120)
    assert result.status == RunStatus.COMPLETED and result.counts.corrections_pushed == 6 * len(world.meters)


async def test_budget_survives_a_missing_settings_row(clean_db):
    """TRUNCATE (or an operator's DELETE) leaves no rows: the next slot restores the defaults."""
    await clean_db.execute("DELETE FROM billing.stripe_budget_settings")
    await clean_db.execute("DELETE FROM billing.stripe_budget")
    assert await clean_db.fetchval("SELECT billing.stripe_budget_slot('list_meters')") == 0
    rows = dict(await clean_db.fetch("SELECT bucket, ops_per_second FROM billing.stripe_budget"))
    assert rows == {"account": 25, "list_meters": 25}
    assert await clean_db.fetchval("SELECT reserved_share FROM billing.stripe_budget_settings") == Decimal("0.2")


async def test_budget_cli_set_show_and_bad_input(clean_db, cli_env):
    code, out, err = await cli(cli_env, "budget", "set", "--account", "100", "--endpoint",
                               "meter_event_summaries=20", "--reserved-share", "0.25", "--reason", "live keys",
                               "--actor", "alice", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["reserved_share"] == "0.25"
    buckets = {b["bucket"]: b for b in shown["buckets"]}
    assert buckets["account"]["limit"] == "100" and buckets["account"]["ours"] == "75.00"
    assert buckets["meter_event_summaries"]["ours"] == "15.00"
    audit = await clean_db.fetchrow("SELECT actor, reason, before, after FROM billing.audit_log WHERE action = 'budget.set'")
    assert audit["actor"] == "alice" and audit["reason"] == "live keys"
    assert audit["after"]["buckets"]["meter_event_summaries"] == "20"

    code, out, _ = await cli(cli_env, "budget", "show", "--json")
    assert code == 0 and json.loads(out)["buckets"][0]["bucket"] == "account"

    for args, message in [
        (["--account", "fast"], "--account: 'fast' is not a number"),
        (["--account", "0"], "--account: must be a number of requests per second above 0"),
        (["--endpoint", "summaries"], "expected OPERATION=OPS"),
        ([], "nothing to change"),
    ]:
        code, out, err = await cli(cli_env, "budget", "set", *args, "--reason", "x")
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = await cli(cli_env, "budget", "set", "--reserved-share", "1.5", "--reason", "x")
    assert code == 2 and "Traceback" not in err
    assert await clean_db.fetchval("SELECT count(*) FROM billing.audit_log WHERE action = 'budget.set'") == 1
