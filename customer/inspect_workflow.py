"""InspectCustomer: `billing-recon customer show` as a short, read-only workflow. One activity
reads both sides of every domain (Stripe through the worker's gateway and rate limiter, so the
CLI needs no Stripe key and adds no unmetered client); the pure `customer.compare` names the
mismatches. It writes nothing anywhere."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

from common.failures import permanent_failure
from common.options import short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from customer.activities import CustomerActivities
    from customer.compare import compare
    from customer.types import CustomerError, CustomerView, InspectCustomerInput

# Reads that no retry can change: an unknown customer, a read Stripe refuses.
READ = short_step(CustomerError.NOT_FOUND.value, "StripeRefused")


@workflow.defn(name="InspectCustomer", failure_exception_types=[ValidationError])
class InspectCustomer:
    @workflow.run
    async def run(self, inp: InspectCustomerInput) -> CustomerView:
        try:
            snapshot = await workflow.execute_activity_method(CustomerActivities.inspect, inp, **READ)
        except ActivityError as e:
            raise permanent_failure(e, "InspectFailed") from e
        return CustomerView(snapshot=snapshot, mismatches=compare(snapshot))
