"""One customer's activities (Stripe + Postgres, read-only): resolve the id a caller gave,
read both sides of every domain into one `CustomerSnapshot`, and list the audit rows a repair's
steps wrote. Stripe is read through the worker's gateway (its shared rate limiter); the objects
are mapped with the same functions as the webhook handlers and the resync, so the comparison
shows what those would write."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing.customers import find_customer
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway
from billing.stripe_objects import (
    CUSTOMER_ID_METADATA_KEY,
    InvoiceRow,
    StripeObjectError,
    SubscriptionRow,
    credit_grant,
    invoice_row,
    subscription_row,
)
from common.audit import AuditAction, write_audit
from common.paged import ErrorType, run_write_key
from common.paged_activities import may_write
from credits.checks import CHECKOUT_SOURCE_PREFIX
from customer import store
from customer.compare import CUSTOMER_FIELDS
from customer.types import (
    STRIPE_CUSTOMER_PREFIX,
    AuditRow,
    Credits,
    CustomerError,
    CustomerSnapshot,
    FixesInput,
    InspectCustomerInput,
    Pair,
    Purchase,
    RepairStep,
    ResolvedCustomer,
    ResolveInput,
    StepResult,
    SyncCustomerInput,
)
from customer.usage import period_usage
from webhooks.handlers import lock_object

STRIPE_PAGE = 100  # subscriptions and checkout sessions: the latest page of each


def not_found(ref: str) -> ApplicationError:
    return ApplicationError(f"unknown customer: {ref} (neither Postgres nor Stripe knows it)",
                            type=CustomerError.NOT_FOUND.value, non_retryable=True)


class CustomerActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway, settings: Settings) -> None:
        self.pool = pool
        self.stripe = stripe_gateway
        self.settings = settings

    @activity.defn(name="customer.resolve")
    async def resolve(self, inp: ResolveInput) -> ResolvedCustomer:
        """Our customer id and its Stripe id; a customer Postgres does not know, or without a
        Stripe customer, is bad input for a repair (UnknownCustomer, never retried)."""
        async with self.pool.acquire() as conn:
            row = await find_customer(conn, inp.customer)
            if row is None or not row["stripe_customer_id"]:
                why = "not in billing.customers" if row is None else "it has no Stripe customer id"
                raise ApplicationError(f"unknown customer: {inp.customer} ({why})",
                                       type=ErrorType.UNKNOWN_CUSTOMER.value, non_retryable=True)
            return ResolvedCustomer(customer_id=row["customer_id"], stripe_customer_id=row["stripe_customer_id"],
                                    audit_high_water=await store.audit_high_water(conn))

    @activity.defn(name="customer.sync_fields")
    async def sync_fields(self, inp: SyncCustomerInput) -> StepResult:
        """The customer row's email, name and deletion from a fresh read of Stripe, in apply mode
        and unless auto-healing is paused: one transaction under the customer's lock (the webhook
        handler's and `link_customer`'s), one audit row. The mapping is never changed here."""
        ctx = inp.context
        cid, sid = ctx.scope.customer_id, ctx.scope.stripe_customer_id
        assert cid is not None and sid is not None
        fresh = _stripe_customer(await self.stripe.retrieve("customer", sid))
        async with self.pool.acquire() as conn, conn.transaction():
            await lock_object(conn, sid)
            row = await conn.fetchrow("SELECT * FROM billing.customers WHERE customer_id = $1 FOR UPDATE", cid)
            here = _local_customer(row)
            if fresh is None or here is None:
                return StepResult(step=RepairStep.CUSTOMER, workflow_id=ctx.run_id,
                                  summary="Stripe has no such customer: reported, left as it is")
            fields = ("deleted",) if fresh["deleted"] else CUSTOMER_FIELDS
            changed = [f for f in fields if here.get(f) != fresh.get(f)]
            write, paused = await may_write(conn, ctx)
            if not changed or not write:
                return StepResult(step=RepairStep.CUSTOMER, workflow_id=ctx.run_id, paused=paused,
                                  summary=f"differs: {', '.join(changed)}" if changed else "matches")
            await conn.execute(
                """UPDATE billing.customers SET email = CASE WHEN $2 THEN email ELSE $3 END,
                          name = CASE WHEN $2 THEN name ELSE $4 END,
                          deleted_at = CASE WHEN $2 THEN coalesce(deleted_at, now()) END,
                          stripe_synced_at = now(), updated_at = now()
                    WHERE customer_id = $1""", cid, fresh["deleted"], fresh.get("email"), fresh.get("name"))
            await write_audit(conn, ctx.audit_entry(
                AuditAction.CUSTOMER_RESYNC, entity_type="customer", entity_id=cid,
                before={f: here[f] for f in changed}, after={f: fresh[f] for f in changed},
                idempotency_key=run_write_key(ctx, "customer-resync", cid), customer_id=cid))
        return StepResult(step=RepairStep.CUSTOMER, workflow_id=ctx.run_id, summary=f"fixed: {', '.join(changed)}")

    @activity.defn(name="customer.fixes")
    async def fixes(self, inp: FixesInput) -> list[AuditRow]:
        async with self.pool.acquire() as conn:
            return await store.fixes(conn, inp.after_id, inp.workflow_ids)

    @activity.defn(name="customer.inspect")
    async def inspect(self, inp: InspectCustomerInput) -> CustomerSnapshot:
        """Both sides of every domain. Stripe refusing a read (4xx) fails for good: retrying the
        same request cannot help."""
        try:
            return await self._inspect(inp)
        except stripe.InvalidRequestError as e:
            raise ApplicationError(f"Stripe refused a read: {e.user_message or e}", type="StripeRefused",
                                   non_retryable=True) from e

    async def _inspect(self, inp: InspectCustomerInput) -> CustomerSnapshot:
        async with self.pool.acquire() as conn:
            local = await find_customer(conn, inp.customer)
        stripe_id = local["stripe_customer_id"] if local is not None else (
            inp.customer if inp.customer.startswith(STRIPE_CUSTOMER_PREFIX) else None)
        remote = await self.stripe.retrieve("customer", stripe_id) if stripe_id else None
        if local is None and remote is None:
            raise not_found(inp.customer)
        customer_id = local["customer_id"] if local is not None else None
        snap = CustomerSnapshot(
            ref=inp.customer, customer_id=customer_id, stripe_customer_id=stripe_id, read_at=datetime.now(UTC),
            customer=Pair(id=customer_id or stripe_id or inp.customer, local=_local_customer(local),
                          stripe=_stripe_customer(remote)))
        if stripe_id:
            snap.subscriptions = await self._subscriptions(customer_id, stripe_id)
            snap.invoices = await self._invoices(stripe_id, inp.invoices)
            snap.credits.purchases, snap.credits.invalid_purchases = await self._purchases(stripe_id)
        if customer_id is not None:
            await self._local_only(snap, customer_id, stripe_id, inp)
        return snap

    async def _local_only(self, snap: CustomerSnapshot, customer_id: str, stripe_id: str | None,
                          inp: InspectCustomerInput) -> None:
        async with self.pool.acquire() as conn:
            balance, total, ledger = await store.credits(conn, customer_id, inp.ledger_rows)
            snap.credits = Credits(balance=balance, ledger_sum=total, ledger=ledger, purchases=snap.credits.purchases,
                                   invalid_purchases=snap.credits.invalid_purchases)
            snap.findings_run, snap.findings = await store.open_findings(conn, customer_id)
            snap.events = await store.inbox_events(conn, stripe_id, inp.events) if stripe_id else []
            snap.audit = await store.audit_rows(conn, customer_id, inp.audit_rows)
        snap.usage = await period_usage(self.pool, self.stripe, self.settings, customer_id, stripe_id)

    async def _subscriptions(self, customer_id: str | None, stripe_id: str) -> list[Pair]:
        listed, _ = await self.stripe.list_subscriptions_page(customer=stripe_id, starting_after=None,
                                                              limit=STRIPE_PAGE)
        theirs = {s["id"]: subscription_row(s).compared() for s in listed}
        async with self.pool.acquire() as conn:
            ours = await store.subscriptions(conn, customer_id, stripe_id, SubscriptionRow.COMPARED)
        for sid in ours.keys() - theirs.keys():  # beyond Stripe's first page, or gone there
            fresh = await self.stripe.retrieve("subscription", sid)
            if fresh is not None:
                theirs[sid] = subscription_row(fresh).compared()
        order = [*theirs, *(s for s in ours if s not in theirs)]
        return [Pair(id=sid, local=ours.get(sid), stripe=theirs.get(sid)) for sid in order]

    async def _invoices(self, stripe_id: str, limit: int) -> list[Pair]:
        """The latest invoices of either side, each compared with the other side's copy."""
        listed, _ = await self.stripe.list_invoices_page(status=None, customer=stripe_id, starting_after=None,
                                                         limit=limit)
        theirs = {i["id"]: invoice_row(i).compared() for i in listed}
        async with self.pool.acquire() as conn:
            latest_here = await store.latest_invoices(conn, stripe_id, limit)
            ours = await store.invoices(conn, sorted({*theirs, *latest_here}), InvoiceRow.COMPARED)
        for iid in ours.keys() - theirs.keys():
            fresh = await self.stripe.retrieve("invoice", iid)
            if fresh is not None:
                theirs[iid] = invoice_row(fresh).compared()
        order = [*(i for i in theirs), *(i for i in latest_here if i not in theirs)]
        return [Pair(id=iid, local=ours.get(iid), stripe=theirs.get(iid)) for iid in order]

    async def _purchases(self, stripe_id: str) -> tuple[list[Purchase], list[str]]:
        """Stripe's latest paid credit checkouts of the customer and the ledger rows granting them."""
        sessions, _ = await self.stripe.list_checkout_sessions_page(customer=stripe_id, limit=STRIPE_PAGE)
        found: list[tuple[str, int, int | None]] = []
        invalid: list[str] = []
        for s in sessions:
            try:
                grant = credit_grant(s)
            except StripeObjectError as e:
                invalid.append(f"{s.get('id')}: {e}")
                continue
            if grant is not None:
                found.append((grant.checkout_session_id, grant.amount, s.get("created")))
        async with self.pool.acquire() as conn:
            granted = await store.grants(conn, [cs for cs, _, _ in found], CHECKOUT_SOURCE_PREFIX)
        purchases = [Purchase(checkout_session_id=cs, credits=amount,
                              created=datetime.fromtimestamp(created, tz=UTC) if created else None,
                              granted=granted.get(cs, (0, 0))[0], granted_amount=granted.get(cs, (0, 0))[1])
                     for cs, amount, created in found]
        return purchases, invalid


def _local_customer(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"customer_id": row["customer_id"], "stripe_customer_id": row["stripe_customer_id"],
            "email": row["email"], "name": row["name"], "deleted": row["deleted_at"] is not None}


def _stripe_customer(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """Stripe's customer in the local row's shape; `customer_id` is what its metadata claims."""
    if obj is None:
        return None
    if obj.get("deleted"):
        return {"stripe_customer_id": obj.get("id"), "deleted": True}
    return {"customer_id": (obj.get("metadata") or {}).get(CUSTOMER_ID_METADATA_KEY),
            "stripe_customer_id": obj["id"], "email": obj.get("email"), "name": obj.get("name"), "deleted": False}
