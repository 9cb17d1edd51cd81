"""The notifications outbox (billing.notifications, migration 0016): `emit` records a
notification, in the caller's transaction, once per (subject, kind); `deliver_due` sends what is
due to every configured target and records each answer.

Exactly once, as far as a receiver can tell: a row is claimed (attempts + 1, next attempt pushed
back) before anything is sent, each target's success is recorded as soon as it answers, and a
target already answered is never sent again. A worker that dies between a send and its record
leaves the row to be claimed again after its backoff: the same event id goes out again, which the
JSON webhook (`Idempotency-Key`) and PagerDuty (`dedup_key`) receivers fold into one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg

from billing import metrics
from notify.targets import DeliveryError, Request
from notify.types import DeliverResult, Notification, event_id

log = logging.getLogger(__name__)

# A failed attempt is tried again after 5 s, doubling up to 15 min.
FIRST_BACKOFF = timedelta(seconds=5)
MAX_BACKOFF = timedelta(minutes=15)


# Doubling past this many attempts is past MAX_BACKOFF already (and would overflow).
MAX_DOUBLINGS = 20


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th attempt (claim_due computes the same in SQL)."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(MAX_DOUBLINGS, max(0, attempts - 1)))


@asynccontextmanager
async def never_failing(conn: asyncpg.Connection, what: str) -> AsyncIterator[None]:
    """Recording a notification never fails what it reports: an error inside is logged and
    swallowed, and a savepoint undoes its partial writes (the caller's transaction goes on)."""
    try:
        async with conn.transaction():
            yield
    except Exception:
        log.exception("notification for %s not recorded", what)


async def emit(conn: asyncpg.Connection | asyncpg.Pool, n: Notification) -> bool:
    """Record `n` for delivery (in the caller's transaction when `conn` is in one). False when
    the same (subject, kind) was recorded before: nothing new is sent."""
    key = n.dedupe_key()
    row = await conn.fetchval(
        """
        INSERT INTO billing.notifications (dedupe_key, event_id, kind, subject, body)
        VALUES ($1, $2, $3, $4, $5::jsonb)
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING true
        """, key, event_id(key), n.kind.value, n.subject, n.model_dump(mode="json"))
    return bool(row)


Sender = Callable[[Request], Awaitable[None]]
RequestsFor = Callable[[Notification, str], dict[str, Request]]


async def claim_due(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Due pending rows, each claimed for one attempt: attempts + 1 and the next attempt pushed
    back by the backoff (`backoff(attempts)`), so a claim that dies mid-send is retried, not lost."""
    return await pool.fetch(
        """
        WITH due AS (
            SELECT dedupe_key FROM billing.notifications
             WHERE status = 'pending' AND next_attempt_at <= now()
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
        UPDATE billing.notifications n
           SET attempts = n.attempts + 1,
               next_attempt_at = now() + least($3::interval, $2::interval * power(2, least(n.attempts, $4)))
          FROM due WHERE n.dedupe_key = due.dedupe_key
        RETURNING n.dedupe_key, n.event_id, n.kind, n.body, n.delivered, n.attempts
        """, limit, FIRST_BACKOFF, MAX_BACKOFF, MAX_DOUBLINGS)


async def deliver_row(pool: asyncpg.Pool, row: asyncpg.Record, requests_for: RequestsFor, send: Sender,
                      max_attempts: int) -> str:
    """Send one claimed row to every configured target it has not reached yet; returns the
    row's new status (`pending` means: tried again later)."""
    n = Notification.model_validate(row["body"])
    delivered: dict = row["delivered"] or {}
    requests = requests_for(n, row["event_id"])
    if not requests:
        metrics.record_notification(n.kind.value, "none", "no_target")
        await _finish(pool, row["dedupe_key"], "no_target", None)
        return "no_target"
    errors: list[str] = []
    failed_targets: list[str] = []
    permanent = False
    for target, req in requests.items():
        if target in delivered:
            continue
        try:
            await send(req)
        except DeliveryError as e:
            errors.append(f"{target}: {e}")
            failed_targets.append(target)
            permanent = permanent or e.permanent
            continue
        # Recorded target by target: a later target's failure never resends this one.
        await pool.execute(
            "UPDATE billing.notifications SET delivered = delivered || jsonb_build_object($2::text, now()) "
            "WHERE dedupe_key = $1", row["dedupe_key"], target)
        metrics.record_notification(n.kind.value, target, "sent")
    if not errors:
        await _finish(pool, row["dedupe_key"], "sent", None)
        return "sent"
    error = "; ".join(errors)
    given_up = permanent or row["attempts"] >= max_attempts
    for target in failed_targets:
        metrics.record_notification(n.kind.value, target, "failed" if given_up else "retry")
    if given_up:
        log.error("notification %s (%s) given up after %d attempt(s): %s", row["dedupe_key"], n.kind.value,
                  row["attempts"], error)
        await _finish(pool, row["dedupe_key"], "failed", error)
        return "failed"
    log.warning("notification %s (%s) attempt %d failed, retried later: %s", row["dedupe_key"], n.kind.value,
                row["attempts"], error)
    await pool.execute("UPDATE billing.notifications SET last_error = $2 WHERE dedupe_key = $1",
                       row["dedupe_key"], error)
    return "pending"


async def _finish(pool: asyncpg.Pool, key: str, status: str, error: str | None) -> None:
    await pool.execute(
        "UPDATE billing.notifications SET status = $2, last_error = coalesce($3, last_error), finished_at = now() "
        "WHERE dedupe_key = $1", key, status, error)


def tally(result: DeliverResult, status: str) -> DeliverResult:
    if status == "sent":
        result.sent += 1
    elif status == "failed":
        result.failed += 1
    elif status == "pending":
        result.retrying += 1
    return result


async def retry_failed(conn: asyncpg.Connection, dedupe_key: str | None) -> int:
    """Give failed notifications (one, or every one) a fresh round of attempts, after the target
    was fixed; returns how many. Targets that answered before are not sent again."""
    result = await conn.execute(
        "UPDATE billing.notifications SET status = 'pending', attempts = 0, next_attempt_at = now(), "
        "finished_at = NULL WHERE status = 'failed' AND ($1::text IS NULL OR dedupe_key = $1)", dedupe_key)
    return int(result.split()[-1])
