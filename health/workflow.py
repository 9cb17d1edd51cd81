"""Smoke: one trip through Postgres and Stripe via activities, to prove a deployment is wired."""

from __future__ import annotations

from temporalio import workflow

from common.options import smoke_check

with workflow.unsafe.imports_passed_through():
    from health.activities import HealthActivities
    from health.types import SmokeCheck



@workflow.defn(name="Smoke")
class Smoke:
    @workflow.run
    async def run(self, check: SmokeCheck) -> SmokeCheck:
        check = await workflow.execute_activity_method(
            HealthActivities.check_postgres, check, **smoke_check())
        return await workflow.execute_activity_method(
            HealthActivities.check_stripe, check, **smoke_check())
