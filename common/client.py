"""Connecting to Temporal through Temporal's own envconfig.

`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_PROFILE` and the TOML
profile file (`TEMPORAL_CONFIG_FILE`) work exactly as for the `temporal` CLI. With nothing set
the profile defaults to localhost:7233, namespace `default` (the local dev server).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, NoReturn

from pydantic import ValidationError
from temporalio.client import Client, Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from billing.correlation import CorrelationInterceptor
from common.ui_interceptor import UiInterceptor


class BadInputIsPermanentFailureConverter(DefaultFailureConverter):
    """A workflow that fails on its own input (pydantic's ValidationError, listed in the
    workflow's failure_exception_types) fails non-retryably: retrying the same bad input, e.g.
    under a starter's retry policy or a schedule's, cannot succeed. The SDK would otherwise make
    any non-ApplicationError failure retryable."""

    def to_failure(self, exception, payload_converter, failure) -> None:
        super().to_failure(exception, payload_converter, failure)
        if isinstance(exception, ValidationError) and failure.HasField("application_failure_info"):
            failure.application_failure_info.non_retryable = True


# The one data converter of every client, worker and replayer here: pydantic payloads, and bad
# input as a permanent failure.
data_converter = dataclasses.replace(
    pydantic_data_converter, failure_converter_class=BadInputIsPermanentFailureConverter)

DEFAULT_ADDRESS = "localhost:7233"


def connect_config(address: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    if address:
        config["target_host"] = address
    config.setdefault("target_host", DEFAULT_ADDRESS)
    return config


def default_interceptors() -> list[Interceptor]:
    """Every client (CLI, worker, receiver) carries the correlation id and the OpenTelemetry
    span context into what it starts, and gives it its Temporal UI metadata (common/ui.py);
    all also act as worker interceptors."""
    return [CorrelationInterceptor(), TracingInterceptor(), UiInterceptor()]


async def connect(
    address: str | None = None, *, interceptors: list[Interceptor] | None = None,
    runtime: Runtime | None = None,
) -> Client:
    """A client with the pydantic data converter (the one converter of every client here) and
    `default_interceptors()` unless `interceptors` is given. `runtime`: a process's runtime
    with its metrics endpoint (`billing.telemetry.init_process`)."""
    return await Client.connect(
        **connect_config(address),
        data_converter=data_converter,
        interceptors=default_interceptors() if interceptors is None else interceptors,
        runtime=runtime,
    )


def exit_skipping_finalization(code: int) -> NoReturn:
    """End a process that used a Temporal client or worker, without CPython finalization.

    The SDK's Rust runtime keeps threads alive past `asyncio.run()`; finalizing the interpreter
    under them can abort the process with SIGABRT (temporalio/sdk-python#300), turning a clean
    exit 0 or 1 into -6. Call this only once all work is done and nothing is left to flush but
    stdio."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
