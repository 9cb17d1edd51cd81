"""DailyChecks with stand-in activities: every check runs against the run's one reference time,
a check that fails for good is reported failed with its cause (the others still count), a
transient failure is retried, and the results are recorded once, as returned."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from checks.types import (
    CheckName,
    CheckRequest,
    CheckResult,
    DailyChecksInput,
    DailyChecksResult,
    RecordChecksInput,
)
from checks.workflow import DailyChecks


@dataclass
class Stand:
    refuse: CheckName | None = None  # this check fails for good
    flaky: CheckName | None = None  # this check fails once, then answers
    requests: list[CheckRequest] = field(default_factory=list)
    recorded: list[RecordChecksInput] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)

    def activities(self) -> list:
        def check(name: CheckName):
            @activity.defn(name=f"checks.{name.value}")
            async def run(req: CheckRequest) -> CheckResult:
                self.requests.append(req)
                self.attempts[name] = self.attempts.get(name, 0) + 1
                if name == self.refuse:
                    raise ApplicationError("Stripe refused the API key", type="StripeAuthentication",
                                           non_retryable=True)
                if name == self.flaky and self.attempts[name] == 1:
                    raise RuntimeError("connection reset")
                return CheckResult(check=name, passed=name != CheckName.STALE_COUNTERS, summary=f"{name} ran",
                                   findings=int(name == CheckName.STALE_COUNTERS))
            return run

        @activity.defn(name="checks.record")
        async def record(inp: RecordChecksInput) -> None:
            self.recorded.append(inp)

        return [*(check(n) for n in CheckName), record]


async def run(env: WorkflowEnvironment, task_queue: str, stand: Stand, inp: DailyChecksInput) -> DailyChecksResult:
    async with Worker(env.client, task_queue=task_queue, workflows=[DailyChecks], activities=stand.activities()):
        return await env.client.execute_workflow(
            DailyChecks.run, inp, id=f"checks-{uuid.uuid4().hex[:10]}", task_queue=task_queue)


async def test_every_check_runs_at_one_time_and_the_results_are_recorded(time_skipping_env, task_queue):
    stand = Stand(flaky=CheckName.INBOX_BACKLOG)
    result = await run(time_skipping_env, task_queue, stand, DailyChecksInput(webhook_days=3, stale_counter_days=5))
    assert [c.check for c in result.checks] == list(CheckName)
    assert len({r.now for r in stand.requests}) == 1 and stand.requests[0].now == result.started_at
    assert all(r.webhook_days == 3 and r.stale_counter_days == 5 for r in stand.requests)
    assert stand.attempts[CheckName.INBOX_BACKLOG] == 2  # a transient failure is retried
    assert not result.passed and result.failed == [CheckName.STALE_COUNTERS]
    [recorded] = stand.recorded
    assert recorded.run_id == result.run_id and recorded.results == result.checks


async def test_a_check_that_cannot_run_fails_with_its_cause_and_the_others_still_count(time_skipping_env, task_queue):
    stand = Stand(refuse=CheckName.WEBHOOK_GAPS)
    result = await run(time_skipping_env, task_queue, stand, DailyChecksInput())
    by = {c.check: c for c in result.checks}
    assert stand.attempts[CheckName.WEBHOOK_GAPS] == 1  # non-retryable: not tried again
    assert by[CheckName.WEBHOOK_GAPS].error == "Stripe refused the API key"
    assert not by[CheckName.WEBHOOK_GAPS].passed and by[CheckName.ACTIVE_SUBSCRIPTIONS].passed
    assert set(result.failed) == {CheckName.WEBHOOK_GAPS, CheckName.STALE_COUNTERS}
    assert stand.recorded[0].results == result.checks
