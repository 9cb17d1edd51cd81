"""What the activities of every paged run (ResyncSubscriptions, RepairCredits) share: the run's
start and cleanup activities, its scope, the pause check before each batch of writes and the
run's scratch rows (`billing.run_seen`).

The start and cleanup activities keep the `resync.` names they were first recorded under
(running workflows and the recorded histories schedule them by name)."""

from __future__ import annotations

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from autoheal import switch
from common.paged import CleanupInput, ContextInput, ErrorType, PagedRunContext, RunScope
from common.types import Mode


async def resolve_scope(conn: asyncpg.Connection | asyncpg.Pool, customer: str | None) -> RunScope:
    """Our customer id -> its Stripe id; an unknown customer is a permanent error."""
    if customer is None:
        return RunScope()
    row = await conn.fetchrow(
        "SELECT stripe_customer_id FROM billing.customers WHERE customer_id = $1", customer)
    if row is None:
        raise ApplicationError(f"unknown customer: {customer}", type=ErrorType.UNKNOWN_CUSTOMER.value,
                               non_retryable=True)
    if not row["stripe_customer_id"]:
        raise ApplicationError(f"customer {customer} has no Stripe customer id",
                               type=ErrorType.UNKNOWN_CUSTOMER.value, non_retryable=True)
    return RunScope(customer_id=customer, stripe_customer_id=row["stripe_customer_id"])


async def may_write(conn: asyncpg.Connection, ctx: PagedRunContext) -> tuple[bool, bool]:
    """(write, paused): corrective writes only in apply mode, and while auto-healing is paused
    only for an operator's explicit action. Read before each batch of writes."""
    if ctx.mode != Mode.APPLY:
        return False, False
    if ctx.manual:
        return True, False
    paused = await switch.paused(conn)
    return not paused, paused


async def mark_seen(conn: asyncpg.Connection, run_id: str, kind: str, keys: list[str]) -> set[str]:
    """Record keys as seen by the run; returns those seen for the first time."""
    rows = await conn.fetch(
        """
        INSERT INTO billing.run_seen (run_id, kind, key) SELECT $1, $2, unnest($3::text[])
        ON CONFLICT DO NOTHING RETURNING key
        """, run_id, kind, keys)
    return {r["key"] for r in rows}


class PagedRunActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @activity.defn(name="resync.start")
    async def start(self, inp: ContextInput) -> PagedRunContext:
        """Resolve the run's scope and clear the scratch rows of an earlier run under the same
        workflow id."""
        async with self.pool.acquire() as conn:
            scope = await resolve_scope(conn, inp.customer)
            await conn.execute("DELETE FROM billing.run_seen WHERE run_id = $1", inp.run_id)
        return PagedRunContext(run_id=inp.run_id, workflow_run_id=inp.workflow_run_id, scope=scope,
                               mode=inp.mode, actor=inp.actor, reason=inp.reason, manual=inp.manual)

    @activity.defn(name="resync.cleanup")
    async def cleanup(self, inp: CleanupInput) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM billing.run_seen WHERE run_id = $1", inp.run_id)
