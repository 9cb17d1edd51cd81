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


async def set_paused(
    conn: asyncpg.Connection, *, paused: bool, actor: str, reason: str | None
) -> tuple[AutohealState, AutohealState]:
    """Flip the switch (idempotent); returns (before, after). The caller audits."""
    async with conn.transaction():
        before_row = await conn.fetchrow(
            "SELECT paused, since, actor, reason FROM billing.autoheal_state FOR UPDATE")
        before = AutohealState(*before_row) if before_row else AutohealState(False, None, None, None)
        if before.paused == paused:
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
