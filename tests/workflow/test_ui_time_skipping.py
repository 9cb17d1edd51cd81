"""The time-skipping test server refuses custom search attributes at start (it cannot register
any). A worker with our interceptors runs workflows started there without them to the end,
never upserting an outcome: an upsert of an attribute the server does not know would fail the
workflow task (docs/temporal-ui.md)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.worker import Interceptor, Worker

from common import ui
from common.client import default_interceptors
from health.types import SmokeCheck


@workflow.defn(name="UiProbe", sandboxed=False)
class UiProbe:
    @workflow.run
    async def run(self, check: SmokeCheck) -> SmokeCheck:
        await workflow.sleep(timedelta(hours=1))  # skipped by the test server
        ui.set_outcome(ui.Outcome.AWAITING_APPROVAL)  # a no-op here: not started with ours
        return check.model_copy(update={"customers": 1 if ui.registered() else 0})


async def test_time_skipping_server_refuses_our_attributes_and_workflows_run_without_them(time_skipping_env):
    plain = time_skipping_env.client
    # The server itself refuses a start carrying our attributes, as an unregistered attribute.
    # (It also keeps that workflow id taken: on this server, start with a plain client, as the
    # workflow tests do.)
    try:
        await plain.start_workflow(UiProbe.run, SmokeCheck(), id=f"probe-{uuid.uuid4().hex[:6]}", task_queue="none",
                                   search_attributes=TypedSearchAttributes([SearchAttributePair(ui.RUN_KIND, "x")]))
        raise AssertionError("the time-skipping server accepted a custom search attribute")
    except RPCError as e:
        assert ui.unregistered_attribute(e), e

    # A worker with our interceptors (which upsert every run's outcome where they can) runs a
    # workflow started without them to the end: no upsert, so no failed workflow task.
    task_queue = f"ui-ts-{uuid.uuid4().hex[:6]}"
    interceptors = [i for i in default_interceptors() if isinstance(i, Interceptor)]
    async with Worker(plain, task_queue=task_queue, workflows=[UiProbe], interceptors=interceptors):
        result = await plain.execute_workflow(UiProbe.run, SmokeCheck(), id=f"probe-{task_queue}",
                                              task_queue=task_queue, execution_timeout=timedelta(days=1))
    assert result.customers == 0  # ran without our attributes, and finished
