"""The circuit's SQL (migration 0017): every worker's tally of Stripe outcomes, and the one row
of state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from billing.stripe_health import Tally
from circuit.policy import Figures
from circuit.types import CircuitState

# Tally rows older than this are deleted by the circuit's checks (the window is at most 1 h).
TALLY_RETENTION = timedelta(hours=2)


@dataclass(frozen=True)
class CircuitRow:
    state: CircuitState
    since: datetime
    opened_at: datetime | None
    reason: str | None
    paused_by_circuit: bool


async def add_tally(conn: asyncpg.Connection | asyncpg.Pool, worker: str, tally: Tally) -> None:
    """Add one drained tally to this worker's row of the current second."""
    await conn.execute(
        """
        INSERT INTO billing.stripe_call_tally AS t (worker, bucket, requests, errors, by_reason)
        VALUES ($1, date_trunc('second', now()), $2, $3, $4::jsonb)
        ON CONFLICT (worker, bucket) DO UPDATE
           SET requests = t.requests + EXCLUDED.requests, errors = t.errors + EXCLUDED.errors,
               by_reason = (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) FROM (
                   SELECT k, sum(v::int) AS v
                     FROM (SELECT * FROM jsonb_each_text(t.by_reason)
                           UNION ALL SELECT * FROM jsonb_each_text(EXCLUDED.by_reason)) AS e(k, v)
                    GROUP BY k) AS s)
        """, worker, tally.requests, tally.error_count, dict(tally.errors))


async def figures(conn: asyncpg.Connection, window_seconds: float, not_before: datetime) -> Figures:
    """Every worker's outcomes over the window, counting nothing from before `not_before` (the
    circuit's last change: the errors that opened it do not open it again once it closed)."""
    row = await conn.fetchrow(
        """
        SELECT coalesce(sum(requests), 0)::int AS requests, coalesce(sum(errors), 0)::int AS errors
          FROM billing.stripe_call_tally
         WHERE bucket >= greatest(now() - make_interval(secs => $1), $2)
        """, window_seconds, not_before)
    reasons = await conn.fetch(
        """
        SELECT e.key, sum(e.value::int)::int AS n
          FROM billing.stripe_call_tally t, jsonb_each_text(t.by_reason) e
         WHERE t.bucket >= greatest(now() - make_interval(secs => $1), $2)
         GROUP BY e.key
        """, window_seconds, not_before)
    return Figures(requests=row["requests"], errors=row["errors"], window_seconds=window_seconds,
                   by_reason={r["key"]: r["n"] for r in reasons})


async def prune(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM billing.stripe_call_tally WHERE bucket < now() - $1::interval",
                       TALLY_RETENTION)


async def lock_state(conn: asyncpg.Connection) -> CircuitRow:
    """The circuit's row, locked until the transaction ends (one decision at a time)."""
    r = await conn.fetchrow(
        "SELECT state, since, opened_at, reason, paused_by_circuit FROM billing.stripe_circuit FOR UPDATE")
    if r is None:  # the migration inserts it; a hand-emptied table gets it back
        r = await conn.fetchrow(
            "INSERT INTO billing.stripe_circuit (id) VALUES (true) ON CONFLICT (id) DO UPDATE SET id = true "
            "RETURNING state, since, opened_at, reason, paused_by_circuit")
    return CircuitRow(CircuitState(r["state"]), r["since"], r["opened_at"], r["reason"], r["paused_by_circuit"])


async def set_state(conn: asyncpg.Connection, state: CircuitState, reason: str | None, *,
                    new_episode: bool = False) -> CircuitRow:
    r = await conn.fetchrow(
        """
        UPDATE billing.stripe_circuit
           SET state = $1, since = now(), reason = $2, updated_at = now(),
               opened_at = CASE WHEN $3 THEN now() ELSE opened_at END,
               paused_by_circuit = CASE WHEN $3 THEN false ELSE paused_by_circuit END
        RETURNING state, since, opened_at, reason, paused_by_circuit
        """, state.value, reason, new_episode)
    return CircuitRow(CircuitState(r["state"]), r["since"], r["opened_at"], r["reason"], r["paused_by_circuit"])


async def mark_paused_by_circuit(conn: asyncpg.Connection | asyncpg.Pool, value: bool) -> None:
    await conn.execute("UPDATE billing.stripe_circuit SET paused_by_circuit = $1, updated_at = now()", value)


async def read_state(conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT state, since, opened_at, reason, paused_by_circuit FROM billing.stripe_circuit")
