"""DismissStripeEvent: an operator dismisses a webhook event that failed for good
(`billing-recon events dismiss EVT --reason R --actor A`; workflow id `dismiss-event-<evt id>`).

One activity marks the inbox row `dismissed` and writes the `event.dismiss` audit row naming the
actor and the reason, in one transaction. Replays and the inbox sweep skip a dismissed event, so
it no longer fails every replay. Once per event: dismissing it again writes nothing and says so.
An event that did not fail (processed, ignored, still received) is refused: `EventNotDismissable`."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

from common.failures import permanent_failure
from common.options import short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from webhooks.activities import StripeEventActivities
    from webhooks.types import (
        EVENT_NOT_DISMISSABLE,
        EVENT_NOT_IN_INBOX,
        DismissEventActivityInput,
        DismissEventInput,
        DismissEventResult,
    )

WORKFLOW_ID_PREFIX = "dismiss-event-"
DISMISS = short_step(EVENT_NOT_IN_INBOX, EVENT_NOT_DISMISSABLE)


def workflow_id_for(event_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{event_id}"


@workflow.defn(name="DismissStripeEvent", failure_exception_types=[ValidationError])
class DismissStripeEvent:
    @workflow.run
    async def run(self, inp: DismissEventInput) -> DismissEventResult:
        info = workflow.info()
        try:
            return await workflow.execute_activity_method(
                StripeEventActivities.dismiss,
                DismissEventActivityInput(request=inp, workflow_id=info.workflow_id, workflow_run_id=info.run_id),
                **DISMISS)
        except ActivityError as e:
            raise permanent_failure(e, "DismissFailed") from e
