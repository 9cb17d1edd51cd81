"""Notifying from any workflow:

    with workflow.unsafe.imports_passed_through():
        from notify.types import Notification, NotificationKind
    from notify.emit import notify

    await notify(Notification(kind=NotificationKind.DAILY_CHECK_FAILED, subject=workflow.info().workflow_id,
                              title="...", text="...", commands=["billing-recon ..."]))

It records the notification in the outbox (one short activity, a few retries) and returns; the
NotificationDispatcher delivers it. It never raises: a notification that cannot even be recorded
is logged, and the calling workflow goes on. Activities that change state record theirs in their
own transaction instead (`notify.outbox.emit(conn, ...)`)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from common.options import RETRY_INITIAL_INTERVAL

with workflow.unsafe.imports_passed_through():
    from notify.activities import NotifyActivities
    from notify.types import Notification

# Recording is one INSERT: a few tries over about half a minute, then the workflow moves on.
EMIT_TIMEOUT = timedelta(seconds=10)
EMIT_ATTEMPTS = 4


async def notify(n: Notification) -> bool:
    """Record `n` for delivery; True if it is new (False: recorded before, or not recordable)."""
    try:
        res = await workflow.execute_activity_method(
            NotifyActivities.emit, n, start_to_close_timeout=EMIT_TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=RETRY_INITIAL_INTERVAL, maximum_attempts=EMIT_ATTEMPTS))
    except ActivityError as e:
        workflow.logger.warning("notification %s for %s not recorded: %s", n.kind.value, n.subject, e.cause or e)
        return False
    return res.recorded
