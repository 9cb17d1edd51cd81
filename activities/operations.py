"""Operations activities (Postgres + the Temporal client): the global auto-healing switch, its
broadcast to running runs, and the bookkeeping a backfill needs."""

from __future__ import annotations

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from billing import autoheal
from billing.models import (
    AutohealView,
    BroadcastInput,
    BroadcastResult,
    CompletedRunsInput,
    CompletedRunsResult,
    SetAutohealInput,
)


class OperationsActivities:
    def __init__(self, pool: asyncpg.Pool, client: Client) -> None:
        self.pool = pool
        self.client = client

    @activity.defn(name="ops.get_autoheal")
    async def get_autoheal(self) -> AutohealView:
        st = await autoheal.state(self.pool)
        return AutohealView(paused=st.paused, since=st.since, actor=st.actor, reason=st.reason)

    @activity.defn(name="ops.set_autoheal")
    async def set_autoheal(self, inp: SetAutohealInput) -> AutohealView:
        """Flip the switch and audit it, in one transaction (idempotent: a retried activity or a
        repeated pause changes and audits nothing more)."""
        async with self.pool.acquire() as conn, conn.transaction():
            before, after = await autoheal.set_paused(conn, paused=inp.paused, actor=inp.actor, reason=inp.reason)
            if before != after:
                await conn.execute(
                    """
                    INSERT INTO billing.audit_log
                        (actor, action, entity_type, entity_id, before, after, reason, workflow_id, run_id)
                    VALUES ($1, $2, 'autoheal', 'global', $3::jsonb, $4::jsonb, $5, $6, $7)
                    """,
                    inp.actor, "autoheal.pause" if inp.paused else "autoheal.resume",
                    {"paused": before.paused}, {"paused": after.paused}, inp.reason, inp.workflow_id, inp.run_id)
        return AutohealView(paused=after.paused, since=after.since, actor=after.actor, reason=after.reason)

    @activity.defn(name="ops.broadcast")
    async def broadcast(self, inp: BroadcastInput) -> BroadcastResult:
        """Signal every running workflow of the given types (their `pause`/`resume` handlers
        stop or restart corrective writes within one batch)."""
        types = " OR ".join(f"WorkflowType = '{t}'" for t in inp.workflow_types)
        query = f"ExecutionStatus = 'Running' AND ({types})"
        signalled: list[str] = []
        async for wf in self.client.list_workflows(query):
            try:
                await self.client.get_workflow_handle(wf.id, run_id=wf.run_id).signal(inp.signal, inp.request)
                signalled.append(wf.id)
            except RPCError as e:
                if e.status != RPCStatusCode.NOT_FOUND:  # finished meanwhile: nothing to stop
                    raise
            activity.heartbeat(len(signalled))
        return BroadcastResult(signalled=signalled)

    @activity.defn(name="ops.completed_runs")
    async def completed_runs(self, inp: CompletedRunsInput) -> CompletedRunsResult:
        rows = await self.pool.fetch(
            "SELECT run_id FROM billing.reconciliation_runs WHERE run_id = ANY($1) AND status = 'completed' "
            "AND NOT observe_only",
            inp.run_ids)
        return CompletedRunsResult(completed=sorted(r["run_id"] for r in rows))
