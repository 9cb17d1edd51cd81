"""Client and worker interceptor that gives every run its Temporal UI metadata (common/ui.py)
without each caller or workflow asking for it:

- client side, `start_workflow`: the run's search attributes, summary and details from its
  workflow type and input, unless the caller set its own. A namespace where our search
  attributes are not registered refuses such a start; the run is then started without them (the
  summary and details need no registration), one warning says to run `billing-recon
  temporal setup`, and the process's next starts go without them for 5 minutes;
- workflow side, `start_child_workflow`: the same for a child of a run that carries them;
- workflow side, the end of every run: `BillingOutcome` from its result (`ui.outcome_of`), or
  `failed`/`cancelled`, and the final current details (`ui.result_details`).

`common.client.default_interceptors` installs it on every client (and with it every worker)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import temporalio.client
import temporalio.service
from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import CancelledError, FailureError
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    StartChildWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from billing import correlation
from common import ui

log = logging.getLogger("billing.ui")

_warned_unregistered = False
# After a refusal, starts go without search attributes for this long before trying them again
# (a busy receiver does not pay a refused start per event; `temporal setup` takes effect within it).
RETRY_ATTRIBUTES_AFTER_SECONDS = 300.0
_skip_attributes_until = 0.0


class UiInterceptor(temporalio.client.Interceptor, Interceptor):
    def intercept_client(self, next: temporalio.client.OutboundInterceptor) -> temporalio.client.OutboundInterceptor:
        return _ClientOutbound(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowInbound


class _ClientOutbound(temporalio.client.OutboundInterceptor):
    async def start_workflow(
        self, input: temporalio.client.StartWorkflowInput
    ) -> temporalio.client.WorkflowHandle[Any, Any]:
        global _skip_attributes_until
        if input.search_attributes is not None or not input.args:
            return await super().start_workflow(input)
        meta = ui.start_metadata(input.workflow, input.id, input.args[0], correlation_id=correlation.current())
        input.static_summary = input.static_summary or meta.summary
        input.static_details = input.static_details or meta.details
        if time.monotonic() < _skip_attributes_until:
            return await super().start_workflow(input)
        input.search_attributes = meta.search_attributes
        try:
            return await super().start_workflow(input)
        except temporalio.service.RPCError as e:
            if not ui.unregistered_attribute(e):
                raise
            warn_unregistered(e)
            _skip_attributes_until = time.monotonic() + RETRY_ATTRIBUTES_AFTER_SECONDS
            input.search_attributes = None
            return await super().start_workflow(input)


def warn_unregistered(error: BaseException) -> None:
    """Once per process: our search attributes are not registered here."""
    global _warned_unregistered
    if not _warned_unregistered:
        _warned_unregistered = True
        log.warning("started without search attributes (%s): run `billing-recon temporal setup` "
                    "(docs/temporal-ui.md)", getattr(error, "message", error))


class _WorkflowInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        wf_type = workflow.info().workflow_type
        try:
            result = await super().execute_workflow(input)
        except workflow.ContinueAsNewError:
            raise
        except (CancelledError, asyncio.CancelledError):
            ui.set_outcome(ui.Outcome.CANCELLED)
            raise
        except (FailureError, ValidationError) as e:
            # What fails the run (an ApplicationError, or its input refused); any other
            # exception fails only the workflow task, which is retried.
            ui.set_outcome(ui.Outcome.FAILED)
            ui.show_progress(ui.render(f"{wf_type}: failed", facts=[("error", str(e)[:ui.MAX_VALUE_CHARS * 4])]))
            raise
        outcome = ui.outcome_of(result)
        ui.set_outcome(outcome)
        ui.show_progress(ui.result_details(wf_type, outcome, result))
        return result


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    async def start_child_workflow(self, input: StartChildWorkflowInput) -> workflow.ChildWorkflowHandle:
        if input.search_attributes is None and input.args and ui.registered():
            meta = ui.start_metadata(input.workflow, input.id, input.args[0],
                                     correlation_id=workflow.info().typed_search_attributes.get(ui.CORRELATION_ID))
            input.search_attributes = meta.search_attributes
            input.static_summary = input.static_summary or meta.summary
            input.static_details = input.static_details or meta.details
        return await super().start_child_workflow(input)
