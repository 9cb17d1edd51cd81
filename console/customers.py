"""One customer: the same data as `billing-recon customer show` (the InspectCustomer workflow),
and a Repair button that starts RepairCustomer exactly as `customer repair --apply` does (one
workflow id per customer, the signed-in actor) and follows it.

No customer id is ever put in a URL (customer ids and Stripe ids can be personal data, and URLs
end up in logs, history and Referer headers): the id travels in POST bodies only, and the repair
is followed at /repairs/<Temporal run id>, an opaque UUID."""

from __future__ import annotations

import asyncio
import uuid

from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from billing.customers import find_customer
from billing.settings import get_settings
from common.types import Mode
from console.settings import Role
from console.web import Ctx, guard, refuse
from customer.inspect_workflow import InspectCustomer
from customer.repair_workflow import RepairCustomer
from customer.types import (
    STRIPE_CUSTOMER_PREFIX,
    CustomerView,
    InspectCustomerInput,
    RepairCustomerInput,
    RepairCustomerResult,
)
from starter.customer_commands import repair_workflow_id
from starter.customer_view import CUSTOMER_ROWS, INVOICE_COLUMNS, SUBSCRIPTION_COLUMNS
from starter.kit import new_id

REFRESH_SECONDS = 2


@guard(Role.VIEWER)
async def lookup_form(ctx: Ctx) -> Response:
    return ctx.render("customer_lookup.html", error=None)


@guard(Role.VIEWER, post=True)
async def show(ctx: Ctx) -> Response:
    ref = ctx.field("customer")
    try:
        request = InspectCustomerInput(customer=ref or "")
    except ValidationError:
        return ctx.render("customer_lookup.html", status_code=400, error="not a customer id")
    async with ctx.app.pool.acquire() as conn:
        if not request.customer.startswith(STRIPE_CUSTOMER_PREFIX) and await find_customer(conn, request.customer) is None:
            return ctx.render("customer_lookup.html", status_code=404, error="unknown customer")
    client = await ctx.app.temporal()
    try:
        view: CustomerView = await asyncio.wait_for(
            client.execute_workflow(InspectCustomer.run, request, id=new_id("customer-show"),
                                    task_queue=_task_queue()),
            ctx.app.settings.workflow_wait_seconds)
    except TimeoutError:
        return refuse(504, "InspectCustomer did not finish in time: is a worker running?")
    except WorkflowFailureError as e:
        return refuse(502, f"InspectCustomer failed: {getattr(e.cause, 'message', e.cause)}")
    flagged = {(m.domain.value, m.entity, m.field) for m in view.mismatches}
    return ctx.render("customer.html", v=view, s=view.snapshot, flagged=flagged, customer_rows=CUSTOMER_ROWS,
                      subscription_columns=SUBSCRIPTION_COLUMNS, invoice_columns=INVOICE_COLUMNS)


@guard(Role.OPERATOR, post=True)
async def repair(ctx: Ctx) -> Response:
    ref = ctx.field("customer") or ""
    async with ctx.app.pool.acquire() as conn:
        row = await find_customer(conn, ref)
    if row is None or not row["stripe_customer_id"]:
        return refuse(400, "unknown customer (or it has no Stripe customer id); nothing was started")
    customer_id = row["customer_id"]
    try:
        request = RepairCustomerInput(customer=customer_id, mode=Mode.APPLY, actor=ctx.who.actor,
                                      reason=ctx.field("reason"))
    except ValidationError as e:
        return refuse(400, f"invalid repair: {e.errors()[0]['msg']}")
    client = await ctx.app.temporal()
    try:
        handle = await client.start_workflow(RepairCustomer.run, request, id=repair_workflow_id(customer_id),
                                             task_queue=_task_queue(),
                                             id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
    except WorkflowAlreadyStartedError:
        return refuse(409, "a repair of this customer is already running")
    return RedirectResponse(f"/repairs/{handle.result_run_id}", status_code=303)


@guard(Role.VIEWER)
async def follow(ctx: Ctx) -> Response:
    """A repair by its run id: progress while it runs (the page refreshes itself), then its result."""
    try:
        run_id = str(uuid.UUID(ctx.request.path_params["run_id"]))
    except ValueError:
        return refuse(404, "no such repair")
    client = await ctx.app.temporal()
    found = [wf async for wf in client.list_workflows(
        f"RunId = '{run_id}' AND WorkflowType = 'RepairCustomer'", limit=1)]
    if not found:
        return refuse(404, "no such repair (yet: reload in a moment)")
    handle = client.get_workflow_handle(found[0].id, run_id=run_id, result_type=RepairCustomerResult)
    desc = await handle.describe()
    if desc.status == WorkflowExecutionStatus.RUNNING:
        progress = await handle.query(RepairCustomer.progress)
        return ctx.render("repair.html", running=True, progress=progress, result=None, error=None,
                          refresh=REFRESH_SECONDS, workflow_id=found[0].id, run_id=run_id)
    try:
        result = await handle.result()
    except WorkflowFailureError as e:
        return ctx.render("repair.html", running=False, progress=None, result=None, refresh=None,
                          error=str(getattr(e.cause, "message", e.cause)), workflow_id=found[0].id, run_id=run_id)
    return ctx.render("repair.html", running=False, progress=None, result=result, error=None, refresh=None,
                      workflow_id=found[0].id, run_id=run_id)


def _task_queue() -> str:
    return get_settings().task_queue
