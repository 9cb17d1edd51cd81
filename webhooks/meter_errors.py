"""Async meter errors: thin events from an event destination.

Stripe accepts a meter event with 200 and may reject it later (unknown customer, timestamp too
old, no meter): it reports that only as a thin event, `v1.billing.meter.error_report_triggered`
or `v1.billing.meter.no_meter_found`, to an event destination (FACTS, "Async meter errors").
Without it a lost push is found only after the settle window.

`POST /webhooks/stripe/thin`: the SDK's `parse_event_notification` verifies the signature and
parses the notification (a snapshot event is refused: it belongs on /webhooks/stripe). The report
is stored (`billing.meter_error_reports`) before the answer, so a 200 is never given for a report
we could lose (Postgres down: 503, Stripe retries). Then, within the request, the full event is
fetched (`GET /v2/core/events/{id}`, through the gateway) and the pushes its sample errors name
are marked failed in the outbox, their keys queued for the next tick (`billing.usage_sync_queue`).
If that fetch fails, the answer is still 200 and the tick sweeps the report (`sweep_reports`).
Marking failed is idempotent: only sent or confirmed pushes move, and a report processed twice
finds nothing left to move."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import stripe

from billing.stripe_gateway import StripeGateway
from billing.stripe_health import record_meter_error_reports

log = logging.getLogger("billing.webhooks")

THIN_PATH = "/webhooks/stripe/thin"
METER_ERROR_TYPES = frozenset({"v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"})
QUEUE_REASON = "meter_error"
# Reports the tick retries at most per run (each is one Stripe read).
SWEEP_LIMIT = 100


def sample_errors(event: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(code, message, meter event identifier) of every sample error in a full v2 event."""
    reason = (event.get("data") or {}).get("reason") or {}
    out: list[tuple[str, str, str]] = []
    for error_type in reason.get("error_types") or []:
        for sample in error_type.get("sample_errors") or []:
            identifier = (sample.get("request") or {}).get("identifier")
            if identifier:
                out.append((str(error_type.get("code") or ""), str(sample.get("error_message") or ""),
                            str(identifier)))
    return out


async def store_report(conn: asyncpg.Connection | asyncpg.Pool, event_id: str, event_type: str,
                       meter_id: str | None) -> bool:
    """Insert-if-absent; True when new."""
    return bool(await conn.fetchval(
        "INSERT INTO billing.meter_error_reports (event_id, type, meter_id) VALUES ($1, $2, $3) "
        "ON CONFLICT (event_id) DO NOTHING RETURNING true", event_id, event_type, meter_id))


async def apply_report(pool: asyncpg.Pool, gateway: StripeGateway, event_id: str) -> int:
    """Fetch the full event, mark the pushes it names failed, queue their keys; the number of
    pushes marked. Raises what the fetch raises (the report stays open for the sweep)."""
    try:
        event = await gateway.retrieve_v2_event(event_id)
    except stripe.StripeError as e:
        await pool.execute("UPDATE billing.meter_error_reports SET error = $2 WHERE event_id = $1",
                           event_id, str(e.user_message or e)[:500])
        raise
    errors = sample_errors(event or {})
    by_identifier = {ident: f"{code}: {message}"[:500] for code, message, ident in errors}
    error_count = ((event or {}).get("data") or {}).get("reason", {}).get("error_count")
    async with pool.acquire() as conn, conn.transaction():
        marked = await conn.fetch(
            """
            UPDATE billing.stripe_usage_pushes p
               SET status = 'failed', error = 'rejected asynchronously by Stripe: ' || e.error
              FROM unnest($1::text[], $2::text[]) AS e(identifier, error)
             WHERE p.identifier = e.identifier AND p.status IN ('planned', 'sent', 'confirmed')
            RETURNING p.customer_id, p.meter, p.usage_day
            """, list(by_identifier), list(by_identifier.values()))
        await conn.executemany(
            """
            INSERT INTO billing.usage_sync_queue (customer_id, meter, usage_day, reason, source)
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id, meter, usage_day) DO NOTHING
            """, [(r["customer_id"], r["meter"], r["usage_day"], QUEUE_REASON, event_id) for r in marked])
        await conn.execute(
            """
            UPDATE billing.meter_error_reports
               SET processed_at = now(), identifiers = $2, marked = $3, error_count = $4, error = NULL
             WHERE event_id = $1
            """, event_id, list(by_identifier), len(marked), error_count)
    if marked:
        log.info("error report %s: %d push(es) marked failed", event_id, len(marked))
        # Only pushes this call moved: a report applied twice counts once.
        record_meter_error_reports(len(marked))
    return len(marked)


async def sweep_reports(pool: asyncpg.Pool, gateway: StripeGateway, limit: int = SWEEP_LIMIT) -> int:
    """Apply the reports the receiver stored but could not process; pushes marked failed."""
    open_ids = [r["event_id"] for r in await pool.fetch(
        "SELECT event_id FROM billing.meter_error_reports WHERE processed_at IS NULL "
        "ORDER BY received_at LIMIT $1", limit)]
    return sum([await apply_report(pool, gateway, event_id) for event_id in open_ids])
