"""ProcessStripeEvent: one Stripe event, started by the webhook receiver with the workflow id
`stripe-event-<evt id>` (a duplicate delivery finds it running or done: a no-op).

The activity does the work in one Postgres transaction with the inbox status change. Transient
failures are retried with backoff; when they outlast the retry budget, or the event fails
permanently, the inbox row says `failed` with the error and this workflow fails visibly, so the
event is neither lost nor hidden: replay retries it."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from common.failures import failure_message, failure_type, permanent_failure
from common.options import short_step, webhook_event

with workflow.unsafe.imports_passed_through():
    from webhooks.activities import EventMarkFailedInput, StripeEventActivities
    from webhooks.types import (
        EVENT_NOT_IN_INBOX,
        EventStatus,
        ProcessEventInput,
        ProcessEventResult,
    )

WORKFLOW_ID_PREFIX = "stripe-event-"


def workflow_id_for(event_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{event_id}"


@workflow.defn(name="ProcessStripeEvent")
class ProcessStripeEvent:
    @workflow.run
    async def run(self, inp: ProcessEventInput) -> ProcessEventResult:
        try:
            result = await workflow.execute_activity_method(
                StripeEventActivities.process, inp, **webhook_event(EVENT_NOT_IN_INBOX))
        except ActivityError as e:
            if failure_type(e) == EVENT_NOT_IN_INBOX:
                raise permanent_failure(e, EVENT_NOT_IN_INBOX) from e
            message = failure_message(e)
            await workflow.execute_activity_method(
                StripeEventActivities.mark_failed,
                EventMarkFailedInput(event_id=inp.event_id, error=f"gave up after retries: {message}"),
                **short_step())
            raise ApplicationError(
                f"event {inp.event_id}: gave up after retries: {message}", type="EventProcessingFailed",
                non_retryable=True) from e
        if result.status == EventStatus.FAILED:
            raise ApplicationError(
                f"event {inp.event_id} ({result.type}) failed: {result.detail}", type="EventFailed",
                non_retryable=True)
        return result
