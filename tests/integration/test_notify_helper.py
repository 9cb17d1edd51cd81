"""`notify.emit.notify`, the one call any workflow (the daily checks, say) makes to notify:
recorded once per subject and kind, and never failing the workflow, even when the notification
cannot be recorded at all."""

from __future__ import annotations

import uuid

import pytest
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

# The workflow below is defined here: the sandbox imports this module, so the rest passes through.
with workflow.unsafe.imports_passed_through():
    from notify.activities import NotifyActivities
    from notify.emit import notify
    from notify.types import EmitResult, Notification, NotificationKind

    from .recon_helpers import make_settings

pytestmark = pytest.mark.integration


@workflow.defn(name="NotifiesTwice")
class NotifiesTwice:
    @workflow.run
    async def run(self, subject: str) -> list[bool]:
        n = Notification(kind=NotificationKind.DAILY_CHECK_FAILED, subject=subject,
                         title="daily check 'subscriptions' failed: 2 differ", commands=["billing-recon status"])
        return [await notify(n), await notify(n)]


@activity.defn(name="notify.emit")
async def broken_emit(n: Notification) -> EmitResult:
    raise ApplicationError("Postgres is down", type="ConnectionRefused")


async def test_a_workflow_notifies_once_per_subject_and_kind(clean_db, temporal_env, task_queue, postgres_dsn, emulator):
    acts = NotifyActivities(clean_db, make_settings(postgres_dsn, emulator), temporal_env.client)
    subject = f"checks-{uuid.uuid4().hex[:6]}"
    async with Worker(temporal_env.client, task_queue=task_queue, workflows=[NotifiesTwice], activities=[acts.emit]):
        result = await temporal_env.client.execute_workflow(NotifiesTwice.run, subject, id=subject, task_queue=task_queue)
    assert result == [True, False]
    row = await clean_db.fetchrow("SELECT kind, status, body FROM billing.notifications WHERE subject = $1", subject)
    assert row["kind"] == "daily_check_failed" and row["status"] == "pending"
    assert row["body"]["commands"] == ["billing-recon status"]


async def test_a_notification_that_cannot_be_recorded_never_fails_the_workflow(temporal_env, task_queue):
    subject = f"checks-{uuid.uuid4().hex[:6]}"
    async with Worker(temporal_env.client, task_queue=task_queue, workflows=[NotifiesTwice], activities=[broken_emit]):
        result = await temporal_env.client.execute_workflow(NotifiesTwice.run, subject, id=subject, task_queue=task_queue)
    assert result == [False, False]
