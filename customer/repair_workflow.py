"""RepairCustomer: the support runbook ("I paid but have no access", "I was charged but my credits
weren't added") for one customer, as one audited workflow.

1. Resolve the customer (ours or its Stripe id; unknown -> UnknownCustomer, bad input) and note
   the audit log's last id.
2. Inspect: both sides of every domain and their mismatches (what the repair would fix).
3. The customer row (email, name, deletion) from Stripe, by an activity of its own (audited
   `customer.resync`; the mapping is never changed). Then one child per domain, each the job
   that owns it, scoped to this customer with its existing customer filter:
   ResyncSubscriptions, ResyncInvoices, RepairCredits, ReconcileUsage (its current billing
   period). Every fix is theirs, with their own audit row (one per fix), their own idempotency
   and their own pause handling. While auto-healing is paused every step observes and writes
   nothing, so the result's `before` is what the repair would do. A step that fails is
   reported and the others still run.
4. Inspect again (`after`: what is left) and list the audit rows the steps wrote.

The CLI starts it under `customer-repair-<customer id>` with a conflicting-id refusal, so two
repairs of one customer never run at once. Child ids name the customer, the step and the
random tail of the repair's run id: every repair execution has its own reports."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError

from common.failures import failure_message, permanent_failure
from common.options import short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.paged import ErrorType, PagedRunContext, RunScope
    from common.types import RunStatus
    from credits.repair_workflow import RepairCredits
    from credits.types import RepairCreditsInput
    from customer.activities import CustomerActivities
    from customer.compare import compare
    from customer.types import (
        CustomerError,
        FixesInput,
        InspectCustomerInput,
        Mismatch,
        RepairCustomerInput,
        RepairCustomerResult,
        RepairProgress,
        RepairStep,
        ResolvedCustomer,
        ResolveInput,
        StepResult,
        SyncCustomerInput,
    )
    from reconcile.types import ReconcileUsageInput
    from reconcile.workflow import ReconcileUsage
    from resync.invoices_workflow import ResyncInvoices
    from resync.types import ResyncInvoicesInput, ResyncSubscriptionsInput
    from resync.workflow import ResyncSubscriptions

def step_workflow_id(customer_id: str, step: RepairStep, run_id: str) -> str:
    """A step's child id: the customer, the step and the random tail of the repair's run id."""
    return f"customer-repair-{customer_id}-{step.value}-{run_id[-12:]}"


STEP = short_step(ErrorType.UNKNOWN_CUSTOMER.value, CustomerError.NOT_FOUND.value, "StripeRefused")
DEFAULT_REASON = "customer repair"


@workflow.defn(name="RepairCustomer", failure_exception_types=[ValidationError])
class RepairCustomer:
    def __init__(self) -> None:
        self._progress: RepairProgress | None = None

    @workflow.query(name="progress")
    def progress(self) -> RepairProgress | None:
        return self._progress

    @workflow.run
    async def run(self, inp: RepairCustomerInput) -> RepairCustomerResult:
        info = workflow.info()
        p = self._progress = RepairProgress(workflow_id=info.workflow_id, customer_id=None, mode=inp.mode,
                                            phase="resolving")
        try:
            who = await workflow.execute_activity_method(
                CustomerActivities.resolve, ResolveInput(customer=inp.customer), **STEP)
            p.customer_id, p.phase = who.customer_id, "inspecting"
            before = await self._mismatches(who)
            for step in RepairStep:
                p.phase = step.value
                if step == RepairStep.CUSTOMER:
                    p.current_workflow_id = info.workflow_id
                    p.steps.append(await workflow.execute_activity_method(
                        CustomerActivities.sync_fields, SyncCustomerInput(context=self._context(inp, who)), **STEP))
                    continue
                p.current_workflow_id = step_workflow_id(who.customer_id, step, info.run_id)
                p.steps.append(await self._step(step, inp, who, p.current_workflow_id))
            p.phase, p.current_workflow_id = "verifying", None
            after = await self._mismatches(who)
            fixes = await workflow.execute_activity_method(
                CustomerActivities.fixes, FixesInput(customer_id=who.customer_id, after_id=who.audit_high_water,
                                                     workflow_ids=[s.workflow_id for s in p.steps]), **STEP)
        except ActivityError as e:
            raise permanent_failure(e, "RepairFailed") from e
        p.phase = "done"
        return RepairCustomerResult(
            workflow_id=info.workflow_id, customer_id=who.customer_id, stripe_customer_id=who.stripe_customer_id,
            mode=inp.mode, actor=inp.actor, before=before, after=after, steps=p.steps, fixes=fixes,
            paused=any(s.paused for s in p.steps))

    @staticmethod
    def _context(inp: RepairCustomerInput, who: ResolvedCustomer) -> PagedRunContext:
        """The repair as a run, for the write it makes itself (the customer row)."""
        info = workflow.info()
        return PagedRunContext(run_id=info.workflow_id, workflow_run_id=info.run_id, mode=inp.mode, actor=inp.actor,
                               reason=inp.reason or DEFAULT_REASON,
                               scope=RunScope(customer_id=who.customer_id, stripe_customer_id=who.stripe_customer_id))

    async def _mismatches(self, who: ResolvedCustomer) -> list[Mismatch]:
        snapshot = await workflow.execute_activity_method(
            CustomerActivities.inspect, InspectCustomerInput(customer=who.customer_id), **STEP)
        return compare(snapshot)

    async def _step(self, step: RepairStep, inp: RepairCustomerInput, who: ResolvedCustomer,
                    child_id: str) -> StepResult:
        common: dict[str, Any] = {"customer": who.customer_id, "mode": inp.mode, "actor": inp.actor,
                  "reason": inp.reason or DEFAULT_REASON}
        try:
            if step == RepairStep.SUBSCRIPTIONS:
                sub = await workflow.execute_child_workflow(
                    ResyncSubscriptions.run, ResyncSubscriptionsInput(**common), id=child_id)
                return _mirror_step(step, child_id, sub.paused, sub.counts)
            if step == RepairStep.INVOICES:
                inv = await workflow.execute_child_workflow(
                    ResyncInvoices.run, ResyncInvoicesInput(**common), id=child_id)
                return _mirror_step(step, child_id, inv.paused, inv.counts)
            if step == RepairStep.CREDITS:
                cred = await workflow.execute_child_workflow(
                    RepairCredits.run, RepairCreditsInput(**common, days=inp.credit_days), id=child_id)
                k = cred.counts
                return StepResult(
                    step=step, workflow_id=child_id, paused=cred.paused,
                    failed=f"{k.grants_refused} grant(s) refused (negative ledger)" if k.grants_refused else None,
                    summary=(f"purchases {k.purchases}, missing grants {k.missing_grants}, granted {k.grants_made}, "
                             f"duplicate grants {k.duplicate_grants}, balance mismatches {k.balance_mismatches}, "
                             f"repaired {k.balances_repaired}"))
            usage = await workflow.execute_child_workflow(
                ReconcileUsage.run,
                ReconcileUsageInput(customers=[who.customer_id], mode=inp.mode, actor=inp.actor,
                                    settle_seconds=inp.settle_seconds),
                id=child_id)
            u = usage.counts
            return StepResult(
                step=step, workflow_id=child_id, paused=usage.observe_only,
                failed=f"run ended {usage.status.value}" if usage.status != RunStatus.COMPLETED else None,
                summary=(f"keys {u.keys_checked}, drift {u.drift_count}, counters repaired {u.counter_repairs}, "
                         f"pushed {u.corrections_pushed}, cancelled {u.corrections_cancelled}, "
                         f"pending {u.pending}, held for approval {u.held_for_approval}"))
        except ChildWorkflowError as e:
            return StepResult(step=step, workflow_id=child_id, summary="failed", failed=failure_message(e))


def _mirror_step(step: RepairStep, child_id: str, paused: bool, c: Any) -> StepResult:
    """A mirror resync's step (subscriptions or invoices: their counts have the same fields)."""
    return StepResult(step=step, workflow_id=child_id, paused=paused,
                      failed=f"{c.fix_failures} fix(es) failed" if c.fix_failures else None,
                      summary=(f"compared {c.compared}, mismatched {c.mismatched}, fixed {c.fixed}, "
                               f"missing here {c.missing_local}, created {c.created}, "
                               f"missing in Stripe {c.missing_in_stripe}"))
