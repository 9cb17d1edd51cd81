"""The global auto-healing switch in tests: pause and resume through AutoHealControl (as
`billing-recon pause`/`resume` do), and leave nothing behind for the next test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from autoheal.types import AUTOHEAL_WORKFLOW_ID, AutohealControlInput, AutohealView
from common.types import PauseRequest


async def set_global(client: Client, task_queue: str, signal: str, actor: str, reason: str | None) -> AutohealView:
    """Signal AutoHealControl (`pause` or `resume`), starting it if needed, and wait until the
    switch has moved (the broadcast to running runs follows in the same signal's handling)."""
    handle = await client.start_workflow(
        "AutoHealControl", AutohealControlInput(), id=AUTOHEAL_WORKFLOW_ID, task_queue=task_queue,
        start_signal=signal, start_signal_args=[PauseRequest(actor=actor, reason=reason)],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
    for _ in range(150):
        state = await handle.query("state", result_type=AutohealView)
        if state.paused == (signal == "pause"):
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"{signal} was not applied")


@contextlib.asynccontextmanager
async def global_switch(client: Client, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Afterwards: the switch is off and the control workflow (one global id on a dev server the
    whole session shares) is gone."""
    try:
        yield
    finally:
        await pool.execute("UPDATE billing.autoheal_state SET paused = false")
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(AUTOHEAL_WORKFLOW_ID).terminate("test done")
