"""DailyChecks: the runbook's daily checks, side by side, then their results recorded.

Every check is one read-only activity; they run concurrently. A check whose activity fails for
good (or keeps failing: a bounded number of attempts) is reported as failed with the cause,
so one unreachable dependency never hides the other checks' results. The results are written
to billing.daily_check_runs/_results in one step, for `status`, metrics and alerts."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError

from common.options import ActivityOptions, heartbeat_listing, report_query, short_step

with workflow.unsafe.imports_passed_through():
    from checks.activities import CheckActivities
    from checks.policy import could_not_run
    from checks.types import (
        CheckName,
        CheckRequest,
        CheckResult,
        DailyChecksInput,
        DailyChecksProgress,
        DailyChecksResult,
        RecordChecksInput,
    )
    from common.failures import failure_message

# A check that cannot run after this many attempts (about 15 minutes of backoff) is reported
# as failed; tomorrow's run tries again. Recording the results retries like every short step.
CHECK_ATTEMPTS = 10


def _bounded(options: ActivityOptions) -> ActivityOptions:
    policy = options["retry_policy"]
    return {**options, "retry_policy": dataclasses.replace(policy, maximum_attempts=CHECK_ATTEMPTS)}


# What each check runs, and how: the Stripe listings heartbeat their cursor.
CHECKS: dict[CheckName, tuple[Callable[[CheckActivities, CheckRequest], Awaitable[CheckResult]], ActivityOptions]] = {
    CheckName.ACTIVE_SUBSCRIPTIONS: (CheckActivities.active_subscriptions, _bounded(heartbeat_listing())),
    CheckName.WEBHOOK_GAPS: (CheckActivities.webhook_gaps, _bounded(heartbeat_listing())),
    CheckName.USAGE_WITHOUT_COUNTER: (CheckActivities.usage_without_counter, _bounded(report_query())),
    CheckName.STALE_COUNTERS: (CheckActivities.stale_counters, _bounded(report_query())),
    CheckName.INBOX_BACKLOG: (CheckActivities.inbox_backlog, _bounded(report_query())),
}


@workflow.defn(name="DailyChecks")
class DailyChecks:
    def __init__(self) -> None:
        self._progress = DailyChecksProgress()

    @workflow.query(name="progress")
    def progress(self) -> DailyChecksProgress:
        return self._progress

    @workflow.run
    async def run(self, inp: DailyChecksInput) -> DailyChecksResult:
        started = workflow.now()
        info = workflow.info()
        request = CheckRequest(now=started, run_id=info.workflow_id, **inp.model_dump())
        self._progress.phase = "checking"
        results = await asyncio.gather(*(self._check(name, request) for name in CHECKS))
        self._progress.phase = "recording"
        finished = workflow.now()
        await workflow.execute_activity_method(
            CheckActivities.record,
            RecordChecksInput(run_id=info.workflow_id, workflow_run_id=info.run_id, started_at=started,
                              finished_at=finished, results=list(results)),
            **short_step())
        self._progress.phase = "done"
        return DailyChecksResult(run_id=info.workflow_id, started_at=started, finished_at=finished,
                                 checks=list(results))

    async def _check(self, name: CheckName, request: CheckRequest) -> CheckResult:
        method, options = CHECKS[name]
        try:
            result = await workflow.execute_activity_method(method, request, **options)
        except ActivityError as e:
            result = could_not_run(name, failure_message(e))
        self._progress.done.append(name)
        return result
