"""The audit log: one vocabulary of actions, one row model and one writer for every job.

Every corrective write (and every pause, resume and approval) has one `billing.audit_log` row,
written in the same transaction as the write, idempotently: the row's idempotency key is a
business key, so a retried activity audits once. Its correlation id follows one rule: the
current command's (`billing.correlation`, carried by the worker interceptor), else the
workflow id.

Actions are dotted, `<what it touches>.<verb>`; `docs/operations.md` lists them. Migration
0007_audit_actions renamed the rows written before this vocabulary; `AuditInput` maps the old
names too (an activity scheduled by an older workflow, or a caller not yet moved to
`AuditAction`)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, model_validator

from billing import correlation

if TYPE_CHECKING:
    import asyncpg


class AuditAction(StrEnum):
    # A run's own messages (ReconcileUsage): pause/resume signals, approve/reject updates.
    RUN_PAUSE = "run.pause"
    RUN_RESUME = "run.resume"
    RUN_APPROVE = "run.approve"
    RUN_REJECT = "run.reject"
    # The global auto-healing switch (AutoHealControl).
    AUTOHEAL_PAUSE = "autoheal.pause"
    AUTOHEAL_RESUME = "autoheal.resume"
    # Usage corrections (ReconcileUsage); a push's kind (delta, repush, compensation) is in
    # the row's `after`.
    USAGE_SET_COUNTER = "usage.set_counter"
    USAGE_CANCEL_METER_EVENT = "usage.cancel_meter_event"
    USAGE_PUSH_METER_EVENT = "usage.push_meter_event"
    # Credits (webhook grants, RepairCredits, AdjustCredits).
    CREDITS_GRANT = "credits.grant"
    CREDITS_ADJUST = "credits.adjust"
    CREDITS_BALANCE_REPAIR = "credits.balance_repair"
    # Subscriptions (ResyncSubscriptions).
    SUBSCRIPTION_RESYNC = "subscription.resync"
    SUBSCRIPTION_CREATE = "subscription.create"
    # Duration usage (ReconcileAllocations); its plan decisions and pauses are run.* above.
    ALLOCATIONS_OPEN_USAGE = "allocations.open_usage"
    ALLOCATIONS_CLOSE_USAGE = "allocations.close_usage"
    ALLOCATIONS_POST_DEBITS = "allocations.post_debits"  # the debits (and usage events) of a record's slices
    ALLOCATIONS_CREDIT_PAYMENT = "allocations.credit_payment"  # a payment's ledger credit created and linked
    ALLOCATIONS_LINK_CREDIT = "allocations.link_credit"  # a payment's existing ledger credit linked
    # Invoices (ResyncInvoices): a mirror row fixed, created or marked deleted from Stripe.
    INVOICE_RESYNC = "invoice.resync"
    # The webhook inbox: a failed event dismissed by an operator (DismissStripeEvent).
    EVENT_DISMISS = "event.dismiss"
    # The application's `billing.link_customer` re-keyed the receiver's placeholder customer row
    # (customer_id = its Stripe id) to the application's id (written by SQL: migration 0012).
    CUSTOMER_LINK = "customer.link"
    # RepairCustomer: the customer row's email, name or deletion rewritten from Stripe (never the mapping).
    CUSTOMER_RESYNC = "customer.resync"
    # Revenue reconciliation (RevenueReconciliation): an invoice mirror row fixed or created from
    # Stripe, and a refund of an invoice's charge recorded in billing.invoice_refunds.
    REVENUE_INVOICE_RESYNC = "revenue.invoice_resync"
    REVENUE_RECORD_REFUND = "revenue.record_refund"
    # The shared Stripe budget's limits changed (`billing-recon budget set`).
    BUDGET_SET = "budget.set"
    # An approved invoice adjustment for a closed billing period (ReconcileUsage plan mode):
    # an invoice item, a credit note or a customer balance credit (its kind in `after`).
    USAGE_INVOICE_ADJUSTMENT = "usage.invoice_adjustment"


# The names used before the dotted vocabulary (migration 0007 renames the rows that hold them).
LEGACY_ACTIONS: dict[str, AuditAction] = {
    "pause_auto_healing": AuditAction.RUN_PAUSE,
    "resume_auto_healing": AuditAction.RUN_RESUME,
    "approve_plan": AuditAction.RUN_APPROVE,
    "reject_plan": AuditAction.RUN_REJECT,
    "set_usage_counter": AuditAction.USAGE_SET_COUNTER,
    "cancel_meter_event": AuditAction.USAGE_CANCEL_METER_EVENT,
    # ReconcileAllocations' plan decisions before they joined the run.* actions (an activity an
    # older run scheduled still sends them; rows written under them keep their names).
    "allocations.approve_plan": AuditAction.RUN_APPROVE,
    "allocations.reject_plan": AuditAction.RUN_REJECT,
}
LEGACY_PUSH_PREFIX = "push_meter_event:"  # push_meter_event:<kind> -> usage.push_meter_event


class AuditInput(BaseModel):
    """One audit row. `action` is always an `AuditAction` once validated; a legacy name (see
    LEGACY_ACTIONS) is mapped, an unknown one is refused."""

    actor: str
    action: AuditAction | str
    entity_type: str
    entity_id: str
    reason: str | None = None
    after: dict | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    idempotency_key: str  # a business key: the same write is audited once
    customer_id: str | None = None  # the customer the write touched, for `audit --customer`
    before: dict | None = None

    @model_validator(mode="after")
    def _one_vocabulary(self) -> AuditInput:
        action = str(self.action)
        if action.startswith(LEGACY_PUSH_PREFIX):
            self.after = {**(self.after or {}), "kind": action.removeprefix(LEGACY_PUSH_PREFIX)}
            action = AuditAction.USAGE_PUSH_METER_EVENT
        self.action = AuditAction(LEGACY_ACTIONS.get(action, action))
        return self


def ledger_audit_key(ledger_id: int) -> str:
    """The idempotency key of the audit row of one `billing.credit_ledger` write: the new
    ledger row's own id. Every ledger row gets its own audit row, even one that re-grants a
    source whose first row was lost (its business key, `checkout:<cs>`, is the same; the row is
    not). Deterministic under retry: the ledger row and its audit row commit together, so a retry
    that finds the row written writes neither again."""
    return f"credit-ledger:{ledger_id}"


def correlation_id(workflow_id: str | None) -> str | None:
    """The correlation id of an audit row: the current command's, else the workflow id."""
    return correlation.current() or workflow_id


async def write_audit(conn: asyncpg.Connection, entry: AuditInput) -> bool:
    """Insert `entry` unless a row with its idempotency key exists. True when inserted. Call it
    in the transaction of the write it audits."""
    inserted = await conn.fetchval(
        """
        INSERT INTO billing.audit_log
            (actor, action, entity_type, entity_id, before, after, reason, workflow_id, run_id,
             correlation_id, idempotency_key, customer_id)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
        """,
        entry.actor, str(entry.action), entry.entity_type, entry.entity_id, entry.before, entry.after,
        entry.reason, entry.workflow_id, entry.run_id, correlation_id(entry.workflow_id),
        entry.idempotency_key, entry.customer_id)
    return inserted is not None
