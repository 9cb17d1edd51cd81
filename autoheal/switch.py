"""The global auto-healing switch, read by every corrective activity before each batch of writes.

Paused means observe-only: detection, reports and metrics go on; corrective writes (Stripe
corrections, local repairs, credit grants by repair) stop. Webhook processing is not
auto-healing and is not paused. The state lives in Postgres (`billing.autoheal_state`), so it
survives worker and Temporal restarts and every worker sees the same answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class AutohealState:
    paused: bool
    since: datetime | None
    actor: str | None
    reason: str | None


async def state(conn: asyncpg.Connection | asyncpg.Pool) -> AutohealState:
    row = await conn.fetchrow("SELECT paused, since, actor, reason FROM billing.autoheal_state")
    if row is None:
        return AutohealState(False, None, None, None)
    return AutohealState(row["paused"], row["since"], row["actor"], row["reason"])


async def paused(conn: asyncpg.Connection | asyncpg.Pool) -> bool:
    return (await state(conn)).paused


# The actor whose pause an operator's pause takes over (circuit/types.py CIRCUIT_ACTOR: not
# imported, so that the switch stays free of the circuit package).
TAKEN_OVER_ACTORS = frozenset({"circuit-breaker"})


async def set_paused(
    conn: asyncpg.Connection, *, paused: bool, actor: str, reason: str | None,
    only_if_paused_by: str | None = None,
) -> tuple[AutohealState, AutohealState]:
    """Flip the switch (idempotent); returns (before, after). The caller audits.

    `only_if_paused_by`: a resume that applies only while that actor's pause is in force. A
    pause by someone else while the circuit breaker's pause is in force takes it over (new
    actor, reason and time), so that the circuit's resume leaves it alone."""
    async with conn.transaction():
        before_row = await conn.fetchrow(
            "SELECT paused, since, actor, reason FROM billing.autoheal_state FOR UPDATE")
        before = AutohealState(*before_row) if before_row else AutohealState(False, None, None, None)
        if not paused and only_if_paused_by is not None and before.actor != only_if_paused_by:
            return before, before
        take_over = paused and before.paused and before.actor in TAKEN_OVER_ACTORS and actor != before.actor
        if before.paused == paused and not take_over:
            return before, before
        row = await conn.fetchrow(
            """
            INSERT INTO billing.autoheal_state (id, paused, since, actor, reason, updated_at)
            VALUES (true, $1, now(), $2, $3, now())
            ON CONFLICT (id) DO UPDATE SET paused = $1, since = now(), actor = $2, reason = $3,
                                           updated_at = now()
            RETURNING paused, since, actor, reason
            """, paused, actor, reason)
        return before, AutohealState(*row)
