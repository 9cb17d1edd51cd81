"""Traces and the metrics only some paths produce: Stripe 429s and retries, webhook intake.

- One run traced end to end in-process (OpenTelemetry SDK with an in-memory exporter): the
  client's StartWorkflow span, the workflow and activity spans of TracingInterceptor, a span per
  Stripe call and per Postgres query, all in one trace.
- A Temporal runtime with its Prometheus endpoint in this process: Stripe answering 500 and 429
  shows up as requests by status and as retries (the SDK's and ours); the webhook functions the
  receiver calls show up; with test_metrics, every declared metric is seen exported.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from billing import metrics, telemetry
from billing.stripe_gateway import StripeGateway, make_limiter, make_stripe_client
from common.client import default_interceptors
from common.types import Mode
from devstack.processes import free_port

from .metrics_helpers import scrape, value
from .recon_helpers import make_settings, run, running_worker, seed_world

pytestmark = pytest.mark.integration


async def test_one_trace_from_the_client_through_activities_to_stripe_and_postgres(
    clean_db, stripe_client, emulator, temporal_env, task_queue, postgres_dsn,
):
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing("billing-recon-test", exporter=exporter)
    try:
        world = await seed_world(clean_db, stripe_client, n_customers=2, days=1)
        c = temporal_env.client
        client = Client(c.service_client, namespace=c.namespace, data_converter=c.data_converter,
                        interceptors=default_interceptors())
        settings = make_settings(postgres_dsn, emulator)
        async with running_worker(client, settings, task_queue):  # its pool: after tracing is on
            result = await run(client, task_queue, world.request(mode=Mode.DRY_RUN), f"trace-{world.tag}")
        assert result.counts.keys_checked > 0
        await asyncio.sleep(0.2)  # query spans end in a loop callback
        spans = exporter.get_finished_spans()
        start = [s for s in spans if s.name == "StartWorkflow:ReconcileUsage"]
        assert len(start) == 1
        trace_id = start[0].context.trace_id
        mine = [s for s in spans if s.context.trace_id == trace_id]
        names = {s.name for s in mine}
        assert "RunWorkflow:ReconcileUsage" in names
        assert "RunActivity:usage.reconcile_page" in names
        assert "stripe.meter_event_summaries" in names and "stripe.list_meters" in names
        assert any(n.startswith("postgres ") for n in names), names
        # A Stripe span's parent is the page activity's span.
        by_id = {s.context.span_id: s for s in mine}
        summary = next(s for s in mine if s.name == "stripe.meter_event_summaries")
        assert summary.parent is not None
        assert by_id[summary.parent.span_id].name == "RunActivity:usage.reconcile_page"
    finally:
        exporter.shutdown()  # later tests record nothing more
        telemetry._tracing_enabled = False


async def test_stripe_statuses_retries_and_webhook_counters_on_the_runtime_endpoint(
    emulator, emulator_admin, stripe_client, postgres_dsn,
):
    address = f"127.0.0.1:{free_port()}"
    runtime = telemetry.make_runtime(address, "test")  # keep it: dropped, it stops serving
    try:
        await stripe_client.v1.billing.meters.create_async(params={
            "display_name": "API", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}})
        # One 500 (the SDK retries it), then one 429 (the gateway backs off and retries).
        await emulator_admin.configure(faults=[
            {"path_prefix": "/v1/billing/meters", "method": "GET", "status": 500, "max_count": 1},
            {"path_prefix": "/v1/billing/meters", "method": "GET", "status": 429, "max_count": 1},
        ])
        gateway = StripeGateway(make_stripe_client(make_settings(postgres_dsn, emulator)), make_limiter(0))
        meters = await gateway.list_meters()
        assert [m.event_name for m in meters] == ["api_requests"]

        metrics.record_webhook_received("stored")
        metrics.record_webhook_received("bad_signature")
        metrics.record_webhook_processed(metrics.event_type_family("customer.subscription.updated"), "processed")

        s = await asyncio.to_thread(scrape, address)
        assert value(s, "billing_stripe_requests_total", operation="list_meters", status="500") == 1
        assert value(s, "billing_stripe_requests_total", operation="list_meters", status="429") == 1
        assert value(s, "billing_stripe_requests_total", operation="list_meters", status="200") == 1
        assert value(s, "billing_stripe_retries_total", operation="list_meters", reason="sdk") >= 1
        assert value(s, "billing_stripe_retries_total", operation="list_meters", reason="rate_limited") == 1
        assert value(s, "billing_webhook_received_total", outcome="stored") == 1
        assert value(s, "billing_webhook_received_total", outcome="bad_signature") == 1
        assert value(s, "billing_webhook_processed_total", type_family="customer.subscription",
                     status="processed") == 1
    finally:
        metrics.install(metrics.MetricMeter.noop)
        del runtime
