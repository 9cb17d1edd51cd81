"""Telemetry pieces without servers: OTLP export only when configured, JSON log lines with the
context ids, the webhook metric helpers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

from billing import correlation, metrics
from billing.settings import Settings
from billing.telemetry import ContextFilter, JsonFormatter, TextFormatter

OTLP_PROBE = textwrap.dedent("""
    import http.server, os, threading
    got = []
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            got.append(self.path)
            self.send_response(200)
            self.end_headers()
        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    if sys.argv[1] == "on":
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{srv.server_port}"
    from billing import telemetry
    enabled = telemetry.configure_tracing("probe")
    with telemetry.stripe_span("list_meters"):
        pass
    telemetry.shutdown_tracing()
    print(enabled, got)
""")


def _probe(mode: str) -> str:
    res = subprocess.run([sys.executable, "-c", "import sys\n" + OTLP_PROBE, mode],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_spans_go_over_otlp_http_only_when_an_endpoint_is_configured() -> None:
    assert _probe("on") == "True ['/v1/traces']"
    assert _probe("off") == "False []"


def _format(formatter: logging.Formatter, **extra) -> str:
    record = logging.LogRecord("activities.usage", logging.INFO, __file__, 1, "run %s finished", ("r1",), None)
    for k, v in extra.items():
        setattr(record, k, v)
    ContextFilter().filter(record)
    return formatter.format(record)


def test_json_logs_carry_workflow_run_and_correlation_ids() -> None:
    token = correlation.set_current("corr-1")
    try:
        line = _format(JsonFormatter(), temporal_activity={
            "workflow_id": "wf-1", "workflow_run_id": "run-1", "activity_type": "usage.finish_run", "attempt": 1})
        text = _format(TextFormatter(), temporal_workflow={"workflow_id": "wf-1", "run_id": "run-1"})
    finally:
        correlation._current.reset(token)
    out = json.loads(line)
    assert out["message"] == "run r1 finished" and out["level"] == "INFO"
    assert (out["workflow_id"], out["run_id"], out["correlation_id"], out["activity"]) == (
        "wf-1", "run-1", "corr-1", "usage.finish_run")
    assert text.endswith("[workflow_id=wf-1 run_id=run-1 correlation_id=corr-1]")


def test_log_format_setting_is_checked() -> None:
    assert Settings.model_validate({"LOG_FORMAT": "json"}).log_format == "json"
    try:
        Settings.model_validate({"LOG_FORMAT": "yaml"})
    except ValueError:
        pass
    else:
        raise AssertionError("LOG_FORMAT=yaml accepted")


def test_webhook_helpers_keep_labels_bounded() -> None:
    assert metrics.event_type_family("customer.subscription.updated") == "customer.subscription"
    assert metrics.event_type_family("invoice.paid") == "invoice"
    assert metrics.event_type_family("ping") == "ping"
    # Without a runtime installed these are no-ops, never errors.
    metrics.record_webhook_received("no-such-outcome")
    metrics.record_webhook_processed("invoice", "processed")
