"""AdjustCredits: a manual credit or debit, never a hand-written SQL statement.

One activity writes the ledger row (source `manual:<workflow id>`, so a retry cannot apply it
twice), the balance and the audit row naming actor and reason, in one transaction. A debit that
would make the balance negative is refused (non-retryable) and writes nothing. Not subject to the
auto-healing pause: it is an operator's explicit act. The workflow input (in its history) holds
the actor and the reason too."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from common.failures import permanent_failure

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import ErrorType
    from credits.activities import CreditActivities
    from credits.types import AdjustActivityInput, AdjustCreditsInput, AdjustCreditsResult

ADJUST_TIMEOUT = timedelta(minutes=1)
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[ErrorType.UNKNOWN_CUSTOMER.value, ErrorType.NEGATIVE_BALANCE.value])


@workflow.defn(name="AdjustCredits", failure_exception_types=[ValidationError])
class AdjustCredits:
    @workflow.run
    async def run(self, inp: AdjustCreditsInput) -> AdjustCreditsResult:
        info = workflow.info()
        try:
            return await workflow.execute_activity_method(
                CreditActivities.adjust,
                AdjustActivityInput(request=inp, workflow_id=info.workflow_id, workflow_run_id=info.run_id),
                start_to_close_timeout=ADJUST_TIMEOUT, retry_policy=RETRY)
        except ActivityError as e:
            raise permanent_failure(e, "AdjustFailed") from e
