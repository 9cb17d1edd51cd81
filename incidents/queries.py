"""What the incident report reads: plain SELECTs over the durable records (reconciliation_runs,
discrepancies, the subscription mirror and the inbox's meter events for prices,
stripe_usage_pushes, audit_log, stripe_events), in one read-only, repeatable-read transaction
so every part is of the same moment. Nothing here writes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from checks.store import SUCCESSFUL_RUN
from incidents.report import price_table
from incidents.types import AuditRow, DiscrepancyRow, EventRow, IncidentData, PushRow, RunRow

_RUNS_SQL = """
SELECT run_id, mode, status, observe_only, window_start, window_end,
       coalesce(customers_filter, '{}') AS customers_filter, coalesce(meters_filter, '{}') AS meters_filter,
       customers_after, customers_through, started_at, finished_at, error
  FROM billing.reconciliation_runs
 WHERE kind = 'usage' AND started_at < $2 AND (finished_at IS NULL OR finished_at >= $1)
 ORDER BY started_at, run_id
"""

_LAST_SUCCESS_SQL = f"""
SELECT max(r.finished_at) FROM billing.reconciliation_runs r WHERE {SUCCESSFUL_RUN} AND r.finished_at < $1
"""

# Every finding of the runs that started in the window (verify rows included: they say how a
# key ended).
_DISCREPANCIES_SQL = """
SELECT d.run_id, r.started_at AS run_started_at, d.discrepancy_key, d.kind, d.status, d.customer_id, d.meter,
       d.usage_day, d.period_start, d.ledger_value, d.counter_value, d.stripe_value, d.diff, d.action, d.detail,
       d.created_at
  FROM billing.discrepancies d JOIN billing.reconciliation_runs r USING (run_id)
 WHERE r.kind = 'usage' AND r.started_at >= $1 AND r.started_at < $2
 ORDER BY d.discrepancy_key, r.started_at
"""

_PRICED_ITEMS_SQL = """
SELECT s.customer_id, item->'price' AS price
  FROM billing.subscriptions s, jsonb_array_elements(s.raw->'items'->'data') AS item
 WHERE s.customer_id IS NOT NULL AND jsonb_typeof(s.raw->'items'->'data') = 'array'
   AND jsonb_typeof(item->'price') = 'object'
"""

# Stripe's meters as the inbox heard of them (billing.meter.* events): id -> event name.
_METERS_SQL = """
SELECT DISTINCT ON (payload->'data'->'object'->>'id')
       payload->'data'->'object'->>'id' AS meter_id, payload->'data'->'object'->>'event_name' AS event_name
  FROM billing.stripe_events
 WHERE type LIKE 'billing.meter.%' AND payload->'data'->'object'->>'event_name' IS NOT NULL
 ORDER BY payload->'data'->'object'->>'id', created DESC
"""

_PUSHES_SQL = """
SELECT p.identifier, p.customer_id, p.meter, p.usage_day, p.value, p.kind, p.status, p.replaces, p.planned_at,
       EXISTS (SELECT 1 FROM billing.audit_log a WHERE a.idempotency_key = 'push|' || p.identifier) AS audited
  FROM billing.stripe_usage_pushes p
 WHERE p.planned_at >= $1 AND p.planned_at < $2
 ORDER BY p.planned_at, p.identifier
"""

_AUDIT_SQL = """
SELECT at, actor, action, entity_type, entity_id, customer_id, reason, workflow_id
  FROM billing.audit_log WHERE at >= $1 AND at < $2 ORDER BY at, id
"""

_EVENTS_SQL = """
SELECT event_id, type, created, source, status, attempts, deliveries, processed_at
  FROM billing.stripe_events WHERE created >= $1 AND created < $2 ORDER BY created, event_id
"""


def _rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in records]


async def read_incident(conn: asyncpg.Connection, since: datetime, until: datetime) -> IncidentData:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        runs = await conn.fetch(_RUNS_SQL, since, until)
        last_success = await conn.fetchval(_LAST_SUCCESS_SQL, since)
        discrepancies = await conn.fetch(_DISCREPANCIES_SQL, since, until)
        items = await conn.fetch(_PRICED_ITEMS_SQL)
        meters = await conn.fetch(_METERS_SQL)
        pushes = await conn.fetch(_PUSHES_SQL, since, until)
        audit = await conn.fetch(_AUDIT_SQL, since, until)
        events = await conn.fetch(_EVENTS_SQL, since, until)
    prices = price_table(((r["customer_id"], _json(r["price"])) for r in items),
                         {r["meter_id"]: r["event_name"] for r in meters})
    return IncidentData(
        since=since, until=until, last_success_before=last_success,
        runs=[RunRow.model_validate(r) for r in _rows(runs)],
        discrepancies=[DiscrepancyRow.model_validate(r) for r in _rows(discrepancies)],
        prices=prices,
        pushes=[PushRow.model_validate(r) for r in _rows(pushes)],
        audit=[AuditRow.model_validate(r) for r in _rows(audit)],
        events=[EventRow.model_validate(r) for r in _rows(events)])


def _json(value: Any) -> dict[str, Any]:
    """jsonb as the pool's codec decodes it (billing.db), or as text from a bare connection."""
    return json.loads(value) if isinstance(value, str) else value
