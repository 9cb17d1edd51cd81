"""Process telemetry: the Temporal runtime with its Prometheus endpoint, OpenTelemetry tracing
(OTLP when configured, nothing otherwise) and structured logs.

A long-running process (the worker, the webhook receiver) calls `init_process(settings, service)`
once and connects its Temporal client with the runtime it returns:

    telemetry = init_process(settings, "worker")
    client = await connect(runtime=telemetry.runtime)
    ...
    telemetry.shutdown()   # flushes spans; before exit_skipping_finalization
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import trace
from temporalio import activity
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from billing import correlation, metrics
from billing.settings import Settings, get_settings

TRACER_NAME = "billing-recon"
# Loggers that write one line per HTTP request: noise at this volume.
NOISY_LOGGERS = ("stripe", "httpx")

_tracing_enabled = False


# --- tracing ------------------------------------------------------------------------------------


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def tracing_enabled() -> bool:
    return _tracing_enabled


def configure_tracing(service: str, *, exporter: Any = None, settings: Settings | None = None) -> bool:
    """Install an SDK tracer provider exporting over OTLP/HTTP when an OTLP endpoint is
    configured (the standard OTEL_EXPORTER_OTLP_* variables: endpoint, headers, timeout), or to
    `exporter` (tests). Otherwise nothing: the API's no-op tracer, no spans, no cost."""
    global _tracing_enabled
    if _tracing_enabled:
        return True  # one provider per process: the first configuration stays
    if exporter is None and not (settings or get_settings()).tracing_configured():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracing_enabled = True
    return True


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()  # flushes the batch processor


@contextmanager
def stripe_span(operation: str) -> Iterator[trace.Span]:
    """A client span around one Stripe SDK call (all its HTTP attempts)."""
    with tracer().start_as_current_span(
        f"stripe.{operation}", kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "stripe", "rpc.method": operation},
    ) as span:
        yield span


def _statement_name(query: str) -> str:
    words = query.split(None, 1)
    return words[0].upper() if words else "QUERY"


def _postgres_span(record: Any) -> None:
    """asyncpg query logger: one span per query, back-dated by its elapsed time. asyncpg calls
    it with `loop.call_soon`, which copies the caller's context: the span gets the right parent."""
    elapsed_ns = int(record.elapsed * 1e9)
    end = time.time_ns()
    span = tracer().start_span(
        f"postgres {_statement_name(record.query)}", kind=trace.SpanKind.CLIENT,
        start_time=end - elapsed_ns,
        attributes={"db.system": "postgresql", "db.statement": record.query.strip()[:2000]},
    )
    if record.exception is not None:
        span.record_exception(record.exception)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(record.exception).__name__))
    span.end(end_time=end)


def instrument_connection(conn: asyncpg.Connection) -> None:
    """Spans for every query of this connection, when tracing is on (pool `init`)."""
    if _tracing_enabled:
        conn.add_query_logger(_postgres_span)


# --- logs ---------------------------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Adds workflow_id, run_id, activity, correlation_id and trace_id to every record, from the
    activity or workflow it is logged in (or the `temporal_*` extras of Temporal's loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx: dict[str, Any] = {}
        wf = getattr(record, "temporal_workflow", None)
        act = getattr(record, "temporal_activity", None)
        if isinstance(wf, dict):
            ctx.update(workflow_id=wf.get("workflow_id"), run_id=wf.get("run_id"),
                       workflow_type=wf.get("workflow_type"))
        elif isinstance(act, dict):
            ctx.update(workflow_id=act.get("workflow_id"), run_id=act.get("workflow_run_id"),
                       activity=act.get("activity_type"), attempt=act.get("attempt"))
        elif activity.in_activity():
            info = activity.info()
            ctx.update(workflow_id=info.workflow_id, run_id=info.workflow_run_id,
                       activity=info.activity_type, attempt=info.attempt)
        ctx["correlation_id"] = correlation.current()
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            ctx["trace_id"] = format(span.trace_id, "032x")
            ctx["span_id"] = format(span.span_id, "016x")
        record.billing_context = {k: v for k, v in ctx.items() if v is not None}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "billing_context", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = getattr(record, "billing_context", {})
        keys = ("workflow_id", "run_id", "correlation_id")
        extra = " ".join(f"{k}={ctx[k]}" for k in keys if k in ctx)
        return f"{line} [{extra}]" if extra else line


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- the process --------------------------------------------------------------------------------


@dataclass
class ProcessTelemetry:
    runtime: Runtime | None  # None: the SDK's default runtime (no metrics endpoint)
    metrics_address: str | None

    def shutdown(self) -> None:
        shutdown_tracing()


def make_runtime(bind_address: str, service: str) -> Runtime:
    """A Temporal runtime serving Prometheus metrics on `bind_address` (/metrics), with our
    instruments installed on its meter."""
    runtime = Runtime(telemetry=TelemetryConfig(
        metrics=PrometheusConfig(
            bind_address=bind_address, counters_total_suffix=True,
            histogram_bucket_overrides=metrics.HISTOGRAM_BUCKETS),
        global_tags={"service": service},
    ))
    metrics.install(runtime.metric_meter)
    return runtime


def init_process(settings: Settings, service: str) -> ProcessTelemetry:
    """Logs, tracing and (when METRICS_BIND_ADDRESS is set) the metrics endpoint of one
    process. `service` names it: `worker`, `webhooks`."""
    configure_logging(settings)
    configure_tracing(f"{settings.otel_service_name}-{service}", settings=settings)
    address = settings.metrics_bind_address.strip() or None
    runtime = make_runtime(address, service) if address else None
    if address:
        logging.getLogger("billing.telemetry").info("metrics on http://%s/metrics", address)
    return ProcessTelemetry(runtime=runtime, metrics_address=address)
