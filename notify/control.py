"""Starting the NotificationDispatcher (every worker does at start; one runs per task queue)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from notify.types import DispatcherInput, dispatcher_id
from notify.workflow import NotificationDispatcher


async def ensure_running(client: Client, task_queue: str) -> None:
    await client.start_workflow(
        NotificationDispatcher.run, DispatcherInput(), id=dispatcher_id(task_queue), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary="Notifications: delivers billing.notifications to Slack, PagerDuty, webhooks")
