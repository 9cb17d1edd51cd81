"""Smoke: one trip through Postgres and Stripe via activities, to prove a deployment is wired."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from health.activities import HealthActivities
    from health.types import SmokeCheck

TIMEOUT = timedelta(seconds=30)
# A smoke check answers quickly: a few tries, then fail with the cause (never retry forever).
RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


@workflow.defn(name="Smoke")
class Smoke:
    @workflow.run
    async def run(self, check: SmokeCheck) -> SmokeCheck:
        check = await workflow.execute_activity_method(
            HealthActivities.check_postgres, check, start_to_close_timeout=TIMEOUT, retry_policy=RETRY)
        return await workflow.execute_activity_method(
            HealthActivities.check_stripe, check, start_to_close_timeout=TIMEOUT, retry_policy=RETRY)
