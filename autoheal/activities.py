"""Auto-healing activities (Postgres + the Temporal client): the global switch and its broadcast
to running runs."""

from __future__ import annotations

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from autoheal import switch
from autoheal.types import AutohealView, BroadcastInput, BroadcastResult, SetAutohealInput
from common.audit import AuditAction, AuditInput, write_audit
from common.heartbeat import Heartbeater, resume


class AutohealActivities:
    def __init__(self, pool: asyncpg.Pool, client: Client) -> None:
        self.pool = pool
        self.client = client

    @activity.defn(name="ops.get_autoheal")
    async def get_autoheal(self) -> AutohealView:
        st = await switch.state(self.pool)
        return AutohealView(paused=st.paused, since=st.since, actor=st.actor, reason=st.reason)

    @activity.defn(name="ops.set_autoheal")
    async def set_autoheal(self, inp: SetAutohealInput) -> AutohealView:
        """Flip the switch and audit it, in one transaction (idempotent: a retried activity or a
        repeated pause changes and audits nothing more)."""
        async with self.pool.acquire() as conn, conn.transaction():
            before, after = await switch.set_paused(conn, paused=inp.paused, actor=inp.actor, reason=inp.reason,
                                                    only_if_paused_by=inp.only_if_paused_by)
            if before != after:
                action = AuditAction.AUTOHEAL_PAUSE if inp.paused else AuditAction.AUTOHEAL_RESUME
                await write_audit(conn, AuditInput(
                    actor=inp.actor, action=action, entity_type="autoheal", entity_id="global",
                    before={"paused": before.paused}, after={"paused": after.paused}, reason=inp.reason,
                    workflow_id=inp.workflow_id, run_id=inp.run_id,
                    # One flip, one row: the switch's `since` is the flip's transaction time.
                    idempotency_key=f"{action}|{after.since.isoformat() if after.since else inp.run_id}"))
        return AutohealView(paused=after.paused, since=after.since, actor=after.actor, reason=after.reason)

    @activity.defn(name="ops.broadcast")
    async def broadcast(self, inp: BroadcastInput) -> BroadcastResult:
        """Signal every running workflow of the given types (their `pause`/`resume` handlers
        stop or restart corrective writes within one batch). Heartbeats the runs signalled so
        far; a retry does not signal them again."""
        types = " OR ".join(f"WorkflowType = '{t}'" for t in inp.workflow_types)
        query = f"ExecutionStatus = 'Running' AND ({types})"
        done = resume(BroadcastResult, BroadcastResult())
        async with Heartbeater(done) as hb:
            async for wf in self.client.list_workflows(query):
                if wf.id in done.signalled:
                    continue
                try:
                    await self.client.get_workflow_handle(wf.id, run_id=wf.run_id).signal(inp.signal, inp.request)
                    done.signalled.append(wf.id)
                except RPCError as e:
                    if e.status != RPCStatusCode.NOT_FOUND:  # finished meanwhile: nothing to stop
                        raise
                hb.record(done)
        return done
