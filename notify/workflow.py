"""NotificationDispatcher: delivers the notifications outbox (workflow id
`billing-notifications:<task queue>`, started by every worker; docs/notifications.md).

A round sweeps for stuck runs and long pauses and sends every due notification; rounds follow
each other every NOTIFY_POLL_SECONDS, or at once when `notify.emit` signals `wake`. Deliveries
run in this workflow, never in the business workflows: a target that is down slows nothing
else and fails nothing else."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from common.options import heartbeat_page

with workflow.unsafe.imports_passed_through():
    from notify.activities import NotifyActivities
    from notify.types import DeliverInput, DeliverResult, DispatcherInput, WakeRequest

ROUNDS_PER_RUN = 500  # continue-as-new after this many rounds, to keep the history short


@workflow.defn(name="NotificationDispatcher")
class NotificationDispatcher:
    def __init__(self) -> None:
        self._woken = False
        self._totals = DeliverResult()

    @workflow.signal(name="wake")
    def wake(self, req: WakeRequest) -> None:
        self._woken = True

    @workflow.query(name="totals")
    def totals(self) -> DeliverResult:
        return self._totals

    @workflow.run
    async def run(self, inp: DispatcherInput) -> None:
        for _ in range(ROUNDS_PER_RUN):
            self._woken = False
            res = await workflow.execute_activity_method(
                NotifyActivities.deliver_due, DeliverInput(), **heartbeat_page())
            t = self._totals
            t.sent, t.retrying, t.failed, t.emitted = (t.sent + res.sent, res.retrying, t.failed + res.failed,
                                                       t.emitted + res.emitted)
            workflow.set_current_details(
                f"sent {t.sent}, failed {t.failed}, retrying {t.retrying} (since this run started)")
            try:
                await workflow.wait_condition(lambda: self._woken, timeout=timedelta(seconds=res.poll_seconds))
            except TimeoutError:
                pass
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)
