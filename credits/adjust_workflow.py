"""AdjustCredits: a manual credit or debit, never a hand-written SQL statement.

One activity writes the ledger row (source `manual:<workflow id>`, so a retry cannot apply it
twice), the balance and the audit row naming actor and reason, in one transaction. A debit that
would make the balance negative is refused (non-retryable) and writes nothing. Not subject to the
auto-healing pause: it is an operator's explicit act. The workflow input (in its history) holds
the actor and the reason too."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

from common.failures import permanent_failure
from common.options import short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import PERMANENT_ERRORS
    from credits.activities import CreditActivities
    from credits.types import AdjustActivityInput, AdjustCreditsInput, AdjustCreditsResult

# One transaction: a short step.
ADJUST = short_step(*PERMANENT_ERRORS)


@workflow.defn(name="AdjustCredits", failure_exception_types=[ValidationError])
class AdjustCredits:
    @workflow.run
    async def run(self, inp: AdjustCreditsInput) -> AdjustCreditsResult:
        info = workflow.info()
        try:
            return await workflow.execute_activity_method(
                CreditActivities.adjust,
                AdjustActivityInput(request=inp, workflow_id=info.workflow_id, workflow_run_id=info.run_id),
                **ADJUST)
        except ActivityError as e:
            raise permanent_failure(e, "AdjustFailed") from e
