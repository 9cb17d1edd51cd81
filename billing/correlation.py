"""Correlation id: one id per operator action (a CLI command, a webhook delivery), carried into
every workflow, activity, log line and audit row it causes.

It travels in a Temporal header (`billing-correlation-id`), like the OpenTelemetry span context
of `TracingInterceptor`: the client interceptor adds it to every workflow start, signal and
update; the worker interceptor reads it in the workflow (and its signal and update handlers) and
adds it to every activity, child workflow and continue-as-new the workflow starts; activities
read it in a context variable (`current()`), which `_audit` writes to `billing.audit_log` and the
log filter adds to every record. No workflow or model code has to pass it along.

A workflow started without one (a Temporal Schedule, `temporal workflow start`) uses its own
workflow id, which is deterministic and unique. A signal or update carries the id of the command
that sent it, so `billing-recon pause` is audited under the pause command's id.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

import temporalio.activity
import temporalio.api.common.v1
import temporalio.client
import temporalio.converter
import temporalio.workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ContinueAsNewInput,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    SignalChildWorkflowInput,
    SignalExternalWorkflowInput,
    StartActivityInput,
    StartChildWorkflowInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

HEADER = "billing-correlation-id"
MEMO_KEY = "correlation_id"

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("billing_correlation_id", default=None)
_payloads = temporalio.converter.PayloadConverter.default

Headers = Mapping[str, temporalio.api.common.v1.Payload]


def new_id() -> str:
    return uuid.uuid4().hex


def current() -> str | None:
    return _current.get()


def set_current(value: str | None) -> contextvars.Token:
    return _current.set(value)


def ensure() -> str:
    """The current id, creating one for this context if there is none (a CLI command)."""
    value = _current.get()
    if value is None:
        value = new_id()
        _current.set(value)
    return value


def _with_header(headers: Headers) -> Headers:
    value = _current.get()
    if value is None or HEADER in headers:
        return headers
    return {**headers, HEADER: _payloads.to_payloads([value])[0]}


def _from_headers(headers: Headers) -> str | None:
    payload = headers.get(HEADER)
    if payload is None:
        return None
    value = _payloads.from_payloads([payload])[0]
    return value if isinstance(value, str) and value else None


class CorrelationInterceptor(temporalio.client.Interceptor, Interceptor):
    """Client and worker interceptor; `common.client.connect` installs it."""

    def intercept_client(
        self, next: temporalio.client.OutboundInterceptor
    ) -> temporalio.client.OutboundInterceptor:
        return _ClientOutbound(next)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowInbound


class _ClientOutbound(temporalio.client.OutboundInterceptor):
    async def start_workflow(
        self, input: temporalio.client.StartWorkflowInput
    ) -> temporalio.client.WorkflowHandle[Any, Any]:
        value = ensure()
        input.headers = _with_header(input.headers)
        # Also in the memo: the Temporal UI shows it, and `temporal workflow list` can print it.
        if not input.memo or MEMO_KEY not in input.memo:
            input.memo = {**(input.memo or {}), MEMO_KEY: value}
        return await super().start_workflow(input)

    async def signal_workflow(self, input: temporalio.client.SignalWorkflowInput) -> None:
        ensure()
        input.headers = _with_header(input.headers)
        await super().signal_workflow(input)

    async def start_workflow_update(
        self, input: temporalio.client.StartWorkflowUpdateInput
    ) -> temporalio.client.WorkflowUpdateHandle[Any]:
        ensure()
        input.headers = _with_header(input.headers)
        return await super().start_workflow_update(input)


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        value = _from_headers(input.headers) or temporalio.activity.info().workflow_id
        token = _current.set(value)
        try:
            return await super().execute_activity(input)
        finally:
            _current.reset(token)


class _WorkflowInbound(WorkflowInboundInterceptor):
    _value: str | None = None  # the workflow's own id (from its start)

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound))

    def _workflow_value(self) -> str:
        return self._value or temporalio.workflow.info().workflow_id

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        self._value = _from_headers(input.headers) or temporalio.workflow.info().workflow_id
        _current.set(self._value)
        return await super().execute_workflow(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        # Handlers run in their own task: the sender's id applies to what the handler does (its
        # audit row); a signal sent without one keeps the workflow's.
        _current.set(_from_headers(input.headers) or self._workflow_value())
        await super().handle_signal(input)

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        _current.set(_from_headers(input.headers) or self._workflow_value())
        return await super().handle_update_handler(input)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> temporalio.workflow.ActivityHandle:
        input.headers = _with_header(input.headers)
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> temporalio.workflow.ActivityHandle:
        input.headers = _with_header(input.headers)
        return super().start_local_activity(input)

    async def start_child_workflow(
        self, input: StartChildWorkflowInput
    ) -> temporalio.workflow.ChildWorkflowHandle:
        input.headers = _with_header(input.headers)
        return await super().start_child_workflow(input)

    def continue_as_new(self, input: ContinueAsNewInput) -> NoReturn:
        input.headers = _with_header(input.headers)
        super().continue_as_new(input)

    async def signal_child_workflow(self, input: SignalChildWorkflowInput) -> None:
        input.headers = _with_header(input.headers)
        await super().signal_child_workflow(input)

    async def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        input.headers = _with_header(input.headers)
        await super().signal_external_workflow(input)
