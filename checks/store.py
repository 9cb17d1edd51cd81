"""The daily checks' SQL: what each check reads from Postgres, the durable record of a run's
results (migration 0015_daily_checks) and the last result of each check (for `status`, the
metrics collector and the console). Reads return plain values; only `record_results` writes."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from billing.periods import day_start
from checks.policy import ActiveComparison, StaleCounter, UsageWithoutCounter, WaitingEvent
from checks.types import CheckResult, RecordChecksInput

# A successful reconciliation: a usage run that completed in a mode that heals (dry-runs only
# observe) and was not kept observe-only by the pause from start to end (the same rule as the
# `billing_reconciliation_last_success_timestamp` gauge).
HEALING_MODES = ["apply", "plan"]
SUCCESSFUL_RUN = ("r.kind = 'usage' AND r.status = 'completed' AND r.mode = ANY('{apply,plan}'::text[]) "
                  "AND NOT r.observe_only AND r.finished_at IS NOT NULL")
# A run covers a counter when its window overlaps the counter's period and its filters (none =
# everything; a read-back slice's customer range) include the counter's customer and meter: its
# scan compared that counter with the ledger.
_COVERS = """r.window_start < c.period_end AND r.window_end >= c.period_start
   AND (r.customers_filter IS NULL OR cardinality(r.customers_filter) = 0 OR c.customer_id = ANY(r.customers_filter))
   AND (r.customers_after IS NULL OR c.customer_id > r.customers_after COLLATE "C")
   AND (r.customers_through IS NULL OR c.customer_id <= r.customers_through COLLATE "C")
   AND (r.meters_filter IS NULL OR cardinality(r.meters_filter) = 0 OR c.meter = ANY(r.meters_filter))"""

# ---------------------------------------------------------------------------- subscriptions


# Stripe's active subscription ids a check run listed, kept as the run's scratch rows (they can
# be 100k: too many for a heartbeat), deleted when the check ends.
SEEN_ACTIVE = "daily_check.active_subscription"

# The mirror's active subscriptions created before the grace period (`{before}`: its parameter).
_LOCAL_ACTIVE = "l.status = 'active' AND (l.stripe_created IS NULL OR l.stripe_created < {before})"


async def forget_active(conn: asyncpg.Connection, run_id: str) -> None:
    await conn.execute("DELETE FROM billing.run_seen WHERE run_id = $1 AND kind = $2", run_id, SEEN_ACTIVE)


async def compare_active(conn: asyncpg.Connection, run_id: str, created_before: datetime,
                         sample: int) -> ActiveComparison:
    """Stripe's active subscriptions (the run's scratch rows) vs the mirror's active ones created
    before `created_before`: both counts, and the ids on one side only (counted, and a sample
    with the mirror's status of Stripe's)."""
    local = await conn.fetchval(
        f"SELECT count(*) FROM billing.subscriptions l WHERE {_LOCAL_ACTIVE.format(before='$1')}", created_before)
    stripe = await conn.fetchval("SELECT count(*) FROM billing.run_seen WHERE run_id = $1 AND kind = $2",
                                 run_id, SEEN_ACTIVE)
    only_stripe = await conn.fetch(
        f"""SELECT s.key AS id, l.status, count(*) OVER () AS total
              FROM billing.run_seen s LEFT JOIN billing.subscriptions l ON l.stripe_subscription_id = s.key
             WHERE s.run_id = $1 AND s.kind = $2 AND NOT coalesce({_LOCAL_ACTIVE.format(before='$3')}, false)
             ORDER BY s.key LIMIT $4""", run_id, SEEN_ACTIVE, created_before, sample)
    only_local = await conn.fetch(
        f"""SELECT l.stripe_subscription_id AS id, count(*) OVER () AS total
              FROM billing.subscriptions l
             WHERE {_LOCAL_ACTIVE.format(before='$3')} AND NOT EXISTS (
                   SELECT 1 FROM billing.run_seen s
                    WHERE s.run_id = $1 AND s.kind = $2 AND s.key = l.stripe_subscription_id)
             ORDER BY l.stripe_subscription_id LIMIT $4""", run_id, SEEN_ACTIVE, created_before, sample)
    return ActiveComparison(
        local=int(local), stripe=int(stripe),
        only_stripe=int(only_stripe[0]["total"]) if only_stripe else 0,
        only_local=int(only_local[0]["total"]) if only_local else 0,
        only_stripe_sample=[(r["id"], r["status"]) for r in only_stripe],
        only_local_sample=[r["id"] for r in only_local])


# ---------------------------------------------------------------------------- webhooks


async def inbox_event_ids(conn: asyncpg.Connection, ids: list[str]) -> set[str]:
    rows = await conn.fetch("SELECT event_id FROM billing.stripe_events WHERE event_id = ANY($1)", ids)
    return {r["event_id"] for r in rows}


async def inbox_per_day_and_type(conn: asyncpg.Connection, since: datetime, until: datetime,
                                 type_patterns: list[str]) -> list[asyncpg.Record]:
    """The inbox's events created in [since, until) per UTC day and type (`type_patterns`: SQL
    LIKE patterns; empty = every type)."""
    return await conn.fetch(
        """SELECT (created AT TIME ZONE 'UTC')::date AS day, type, count(*) AS n
             FROM billing.stripe_events
            WHERE created >= $1 AND created < $2 AND (cardinality($3::text[]) = 0 OR type LIKE ANY($3))
            GROUP BY 1, 2""", since, until, type_patterns)


# ---------------------------------------------------------------------------- counters


async def usage_without_counter(conn: asyncpg.Connection, since: date, ingested_before: datetime,
                                sample: int) -> tuple[int, list[UsageWithoutCounter]]:
    """(customer, meter, calendar period) keys with usage since `since` (ingested before
    `ingested_before`: the usage sync had its chance) and no counter row whose period holds the
    usage: how many, and a sample."""
    # Per day first (one pass over the events), then one counter lookup per (customer, meter, day).
    rows = await conn.fetch(
        """WITH days AS (
               SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day,
                      sum(quantity) AS quantity, count(*) AS events
                 FROM billing.usage_events
                WHERE occurred_at >= $1 AND ingested_at < $2
                GROUP BY 1, 2, 3),
           keys AS (
               SELECT d.customer_id, d.meter, date_trunc('month', d.day)::date AS period_start,
                      sum(d.quantity) AS quantity, sum(d.events) AS events
                 FROM days d
                WHERE NOT EXISTS (
                      SELECT 1 FROM billing.usage_counters c
                       WHERE c.customer_id = d.customer_id AND c.meter = d.meter
                         AND c.period_start <= d.day AND c.period_end > d.day)
                GROUP BY 1, 2, 3)
           SELECT *, count(*) OVER () AS total FROM keys ORDER BY customer_id, meter, period_start LIMIT $3""",
        day_start(since), ingested_before, sample)
    total = int(rows[0]["total"]) if rows else 0
    return total, [UsageWithoutCounter(r["customer_id"], r["meter"], r["period_start"], Decimal(r["quantity"]),
                                       int(r["events"])) for r in rows]


async def stale_counters(conn: asyncpg.Connection, today: date, covered_since: datetime, days: int,
                         sample: int) -> tuple[int, int, list[StaleCounter]]:
    """Counters of periods that overlap the last `days` days up to `today`: how many there
    are, how many no successful reconciliation finished since `covered_since` covered, and a
    sample of those with the last successful run that ever covered them."""
    checked, stale = await conn.fetchrow(
        f"""WITH recent AS (SELECT * FROM billing.reconciliation_runs r
                             WHERE {SUCCESSFUL_RUN} AND r.finished_at >= $3)
            SELECT count(*),
                   count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM recent r WHERE {_COVERS}))
              FROM billing.usage_counters c
             WHERE c.period_end > $1::date - $2::int AND c.period_start <= $1""",
        today, days, covered_since)
    rows = await conn.fetch(
        f"""WITH recent AS (SELECT * FROM billing.reconciliation_runs r
                             WHERE {SUCCESSFUL_RUN} AND r.finished_at >= $3)
            SELECT c.customer_id, c.meter, c.period_start, c.value,
                   (SELECT max(r.finished_at) FROM billing.reconciliation_runs r
                     WHERE {SUCCESSFUL_RUN} AND {_COVERS}) AS last_reconciled
              FROM billing.usage_counters c
             WHERE c.period_end > $1::date - $2::int AND c.period_start <= $1
               AND NOT EXISTS (SELECT 1 FROM recent r WHERE {_COVERS})
             ORDER BY c.customer_id, c.meter, c.period_start LIMIT $4""",
        today, days, covered_since, sample)
    return int(stale), int(checked), [
        StaleCounter(r["customer_id"], r["meter"], r["period_start"], Decimal(r["value"]), r["last_reconciled"])
        for r in rows]


# ---------------------------------------------------------------------------- inbox


async def inbox_backlog(conn: asyncpg.Connection, received_before: datetime,
                        sample: int) -> tuple[dict[str, int], datetime | None, list[WaitingEvent]]:
    """Inbox rows still `received` or `failed` that arrived before `received_before`: counts by
    status, the oldest arrival, and a sample, oldest first."""
    counts = await conn.fetch(
        """SELECT status, count(*) AS n, min(received_at) AS oldest FROM billing.stripe_events
            WHERE status IN ('received', 'failed') AND received_at < $1 GROUP BY status""", received_before)
    rows = await conn.fetch(
        """SELECT event_id, type, status, received_at, attempts, error FROM billing.stripe_events
            WHERE status IN ('received', 'failed') AND received_at < $1
            ORDER BY received_at, event_id LIMIT $2""", received_before, sample)
    oldest = min((r["oldest"] for r in counts), default=None)
    return ({r["status"]: int(r["n"]) for r in counts}, oldest,
            [WaitingEvent(r["event_id"], r["type"], r["status"], r["received_at"], int(r["attempts"]), r["error"])
             for r in rows])


# ---------------------------------------------------------------------------- results


async def record_results(conn: asyncpg.Connection, inp: RecordChecksInput) -> None:
    """The run and its results, in one transaction; a retry writes the same rows again.
    (jsonb goes in as Python values: the pool's codec encodes it, billing.db.)"""
    failed = [r.check.value for r in inp.results if not r.passed]
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO billing.daily_check_runs (run_id, workflow_run_id, started_at, finished_at, passed,
                                                     failed_checks)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (run_id) DO UPDATE SET workflow_run_id = $2, started_at = $3, finished_at = $4,
                   passed = $5, failed_checks = $6""",
            inp.run_id, inp.workflow_run_id, inp.started_at, inp.finished_at, not failed, failed)
        await conn.execute("DELETE FROM billing.daily_check_results WHERE run_id = $1", inp.run_id)
        await conn.executemany(
            """INSERT INTO billing.daily_check_results (run_id, check_name, passed, summary, findings, figures, items)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)""",
            [(inp.run_id, r.check.value, r.passed, r.summary, r.findings, r.figures,
              [i.model_dump() for i in r.items]) for r in inp.results])


async def last_results(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The latest result of every check (from the latest run that ran it), with its run's id and
    finish time: what `status`, the metrics and the console show."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (x.check_name) x.check_name, x.passed, x.summary, x.findings, x.figures, x.items,
                  r.run_id, r.finished_at
             FROM billing.daily_check_results x JOIN billing.daily_check_runs r USING (run_id)
            ORDER BY x.check_name, r.finished_at DESC""")
    return [dict(r) for r in rows]


def to_result(row: dict[str, Any]) -> CheckResult:
    """A stored result back as the model the workflow returned."""
    figures, items = row["figures"], row["items"]
    return CheckResult.model_validate({
        "check": row["check_name"], "passed": row["passed"], "summary": row["summary"], "findings": row["findings"],
        "figures": json.loads(figures) if isinstance(figures, str) else figures,
        "items": json.loads(items) if isinstance(items, str) else items})
