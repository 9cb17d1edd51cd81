"""Signalling AutoHealControl from outside a workflow (the CLI, the circuit breaker's
activities): signal-with-start, so the one control workflow is started when it is not running."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from autoheal.types import AUTOHEAL_WORKFLOW_ID, AutohealControlInput
from autoheal.workflow import AutoHealControl
from common.types import PauseRequest


async def signal_autoheal(client: Client, task_queue: str, paused: bool, req: PauseRequest) -> WorkflowHandle:
    return await client.start_workflow(
        AutoHealControl.run, AutohealControlInput(), id=AUTOHEAL_WORKFLOW_ID, task_queue=task_queue,
        start_signal="pause" if paused else "resume", start_signal_args=[req],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
