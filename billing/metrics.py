"""Prometheus metrics of billing-recon: definitions and the small functions that record them.

Mechanism (deliberate): our metrics are instruments of the Temporal runtime's `metric_meter`, so
one endpoint per process (`METRICS_BIND_ADDRESS`, served by the runtime's Prometheus exporter)
carries both the Temporal SDK metrics (`temporal_*`) and ours, with no second HTTP server and no
extra dependency. Counters get the OpenMetrics `_total` suffix on export
(`counters_total_suffix=True`), so `DISCREPANCIES` is scraped as
`billing_reconciliation_discrepancies_total`.

Two kinds of figures:
- *events* counted by the process that saw them (a run finishing, a Stripe request, a webhook):
  per-process counters and histograms. They reset when the process restarts; sum them across
  instances and use `increase()`/`rate()` as usual.
- *state* read from Postgres by `billing.metrics_collector` (last success, the last run's drift,
  the webhook inbox backlog, paused runs): gauges that every worker exports with the same value,
  correct across restarts and with any number of workers (alert on `max()` of them).

Until `install()` is called (a process without a metrics endpoint, unit tests) every function
here is a no-op: Temporal's no-op meter.

Labels stay low-cardinality: run kind and mode, finding kind and action, Stripe operation and
HTTP status, webhook event type family, meter event name. Never a customer id or an event id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from temporalio.common import MetricMeter

# --- names (as exported; counters without the `_total` the exporter adds) -----------------------

# Counters: events, per process.
RUNS = "billing_reconciliation_runs"  # {kind, mode, status}: runs finished by this worker
DISCREPANCIES = "billing_reconciliation_discrepancies"  # {kind, action}: findings of finished runs
DRIFT = "billing_reconciliation_drift"  # {kind}: keys where something disagreed with the ledger
DEDUPE = "billing_reconciliation_dedupe"  # {kind}: duplicate usage submissions absorbed
FAILURES = "billing_reconciliation_failures"  # {kind}: reconcile_failures of finished runs
OVER_QUOTA = "billing_reconciliation_over_quota_transitions"  # {kind}
CORRECTIONS = "billing_reconciliation_corrections"  # {kind, action=pushed|cancelled}
STRIPE_REQUESTS = "billing_stripe_requests"  # {operation, status}: every HTTP request, SDK retries too
STRIPE_RETRIES = "billing_stripe_retries"  # {operation, reason=rate_limited|sdk}
WEBHOOK_RECEIVED = "billing_webhook_received"  # {outcome}
WEBHOOK_PROCESSED = "billing_webhook_processed"  # {type_family, status}
# Histograms.
DURATION = "billing_reconciliation_duration_seconds"  # {kind, mode, status}
STRIPE_DURATION = "billing_stripe_request_duration_seconds"  # {operation}
# Gauges from Postgres (billing.metrics_collector).
LAST_SUCCESS = "billing_reconciliation_last_success_timestamp"  # {kind}
LAST_RUN = "billing_reconciliation_last_run"  # {kind, figure}: the last completed run's counts
LAST_RUN_FINISHED = "billing_reconciliation_last_run_timestamp"  # {kind}: any mode, completed
DIFF_ABS = "reconciliation_diff_abs"  # {kind, meter, against=stripe|counter}: sum |ledger - other|
DIFF_PCT = "reconciliation_diff_pct"  # {kind, meter}: max |L - S| / max(L, 1) (a fraction)
EPSILON = "billing_reconciliation_epsilon"  # the configured RECON_EPSILON (a fraction)
OPEN_RUNS = "billing_reconciliation_open_runs"  # {kind, status}: runs not finished
WEBHOOK_BACKLOG = "billing_webhook_inbox_backlog"  # {status=received|failed}
WEBHOOK_BACKLOG_AGE = "billing_webhook_inbox_oldest_age_seconds"  # oldest event still `received`
PAUSED = "billing_autoheal_paused"  # global switch (1) + runs paused one by one (observe-only)
PAUSED_SINCE = "billing_autoheal_paused_since_timestamp"  # when the oldest current pause began
COLLECTOR_REFRESH = "billing_metrics_collector_last_refresh_timestamp"  # last good refresh
# Daily checks (checks/, from billing.daily_check_*): the last result of each check.
DAILY_CHECK_FAILED = "billing_daily_check_failed"  # {check}: 1 when its last result failed
DAILY_CHECK_FINDINGS = "billing_daily_check_findings"  # {check}: what its last result found wrong
DAILY_CHECKS_LAST_RUN = "billing_daily_checks_last_run_timestamp"  # when the last run finished (0: never)

# The rolling read-back (readback/, from billing.readback_*).
READBACK_CYCLE_STARTED = "billing_readback_cycle_started_timestamp"  # when the current cycle began (0: none yet)
READBACK_CYCLE_PROGRESS = "billing_readback_cycle_progress_ratio"  # customers read this cycle / customers
READBACK_BEHIND = "billing_readback_behind_pace"  # 1: the latest slice could not read every customer due
READBACK_LAST_CYCLE = "billing_readback_last_cycle_finished_timestamp"  # 0: no cycle completed yet

# The Stripe circuit breaker (circuit/): 0 closed, 1 open, 2 half-open (from Postgres).
STRIPE_CIRCUIT_STATE = "billing_stripe_circuit_state"
NOTIFICATIONS = "billing_notifications"  # {kind, target, outcome=sent|retry|failed|no_target}: deliveries

COUNTERS: tuple[str, ...] = (RUNS, DISCREPANCIES, DRIFT, DEDUPE, FAILURES, OVER_QUOTA, CORRECTIONS, STRIPE_REQUESTS,
            STRIPE_RETRIES, WEBHOOK_RECEIVED, WEBHOOK_PROCESSED)
HISTOGRAMS = (DURATION, STRIPE_DURATION)
GAUGES: tuple[str, ...] = (LAST_SUCCESS, LAST_RUN, LAST_RUN_FINISHED, DIFF_ABS, DIFF_PCT, EPSILON, OPEN_RUNS,
          WEBHOOK_BACKLOG, WEBHOOK_BACKLOG_AGE, PAUSED, PAUSED_SINCE, COLLECTOR_REFRESH,
          DAILY_CHECK_FAILED, DAILY_CHECK_FINDINGS, DAILY_CHECKS_LAST_RUN)
COUNTERS += (NOTIFICATIONS,)
GAUGES += (STRIPE_CIRCUIT_STATE, READBACK_CYCLE_STARTED, READBACK_CYCLE_PROGRESS, READBACK_BEHIND,
           READBACK_LAST_CYCLE)

HISTOGRAM_BUCKETS: dict[str, list[float]] = {
    DURATION: [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800],
    STRIPE_DURATION: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
}


def exported_names() -> set[str]:
    """Every series name a scrape of our metrics can contain (what alert rules and the dashboard
    may use), besides the Temporal SDK's own `temporal_*` metrics."""
    names = {f"{c}_total" for c in COUNTERS} | set(GAUGES)
    for h in HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


# Outcomes the webhook receiver reports (`record_webhook_received`).
WEBHOOK_OUTCOMES = ("stored", "duplicate", "bad_signature", "invalid", "error")
# Statuses of `record_webhook_processed` (those of billing.stripe_events, after a handler ran).
WEBHOOK_STATUSES = ("processed", "ignored", "failed")


@dataclass
class _Instruments:
    meter: MetricMeter

    def __post_init__(self) -> None:
        m = self.meter
        self.counters = {
            RUNS: m.create_counter(RUNS, "Reconciliation runs finished, by kind, mode and final status"),
            DISCREPANCIES: m.create_counter(
                DISCREPANCIES, "Findings of finished runs by finding kind and planned action"),
            DRIFT: m.create_counter(DRIFT, "Keys where a counter or Stripe disagreed with the ledger"),
            DEDUPE: m.create_counter(DEDUPE, "Duplicate usage submissions absorbed (dedupe_count)"),
            FAILURES: m.create_counter(FAILURES, "Keys a run could not reconcile (reconcile_failures)"),
            OVER_QUOTA: m.create_counter(OVER_QUOTA, "Counter repairs that crossed a quota"),
            CORRECTIONS: m.create_counter(CORRECTIONS, "Meter events pushed or cancelled by runs"),
            STRIPE_REQUESTS: m.create_counter(
                STRIPE_REQUESTS, "HTTP requests to the Stripe API by operation and HTTP status"),
            STRIPE_RETRIES: m.create_counter(
                STRIPE_RETRIES, "Stripe requests retried (rate_limited: ours after a 429; sdk: the SDK's)"),
            WEBHOOK_RECEIVED: m.create_counter(
                WEBHOOK_RECEIVED, "Stripe webhook deliveries received, by outcome"),
            WEBHOOK_PROCESSED: m.create_counter(
                WEBHOOK_PROCESSED, "Stripe events handled, by event type family and status"),
            NOTIFICATIONS: m.create_counter(
                NOTIFICATIONS, "Notification delivery attempts by kind, target and outcome"),
        }
        self.histograms = {
            DURATION: m.create_histogram_float(
                DURATION, "Wall time of a reconciliation run, start to finish", "s"),
            STRIPE_DURATION: m.create_histogram_float(
                STRIPE_DURATION, "Latency of one Stripe HTTP request", "s"),
        }
        self.gauges = {
            LAST_SUCCESS: m.create_gauge_float(
                LAST_SUCCESS, "Unix time of the last completed apply/plan run (from Postgres)"),
            LAST_RUN: m.create_gauge_float(
                LAST_RUN, "Counts of the last completed run of any mode (from Postgres)"),
            LAST_RUN_FINISHED: m.create_gauge_float(
                LAST_RUN_FINISHED, "Unix time the last completed run of any mode finished"),
            DIFF_ABS: m.create_gauge_float(
                DIFF_ABS, "Sum of |ledger - Stripe| (or |ledger - counter|) found by the last run"),
            DIFF_PCT: m.create_gauge_float(
                DIFF_PCT, "Largest |L - S| / max(L, 1) found by the last run (a fraction)"),
            EPSILON: m.create_gauge_float(EPSILON, "Configured drift tolerance RECON_EPSILON"),
            OPEN_RUNS: m.create_gauge_float(OPEN_RUNS, "Runs not finished, by status"),
            WEBHOOK_BACKLOG: m.create_gauge_float(
                WEBHOOK_BACKLOG, "Webhook inbox events not handled yet (received) or failed"),
            WEBHOOK_BACKLOG_AGE: m.create_gauge_float(
                WEBHOOK_BACKLOG_AGE, "Age of the oldest inbox event still `received` (0 if none)"),
            PAUSED: m.create_gauge_float(PAUSED, "Pauses in force: the global switch (1) plus runs paused one by one"),
            PAUSED_SINCE: m.create_gauge_float(
                PAUSED_SINCE, "Unix time the oldest current pause began (0 if none)"),
            COLLECTOR_REFRESH: m.create_gauge_float(
                COLLECTOR_REFRESH, "Unix time the Postgres-derived gauges were last refreshed"),
            DAILY_CHECK_FAILED: m.create_gauge_float(
                DAILY_CHECK_FAILED, "1 when the last result of a daily check failed, else 0"),
            DAILY_CHECK_FINDINGS: m.create_gauge_float(
                DAILY_CHECK_FINDINGS, "What the last result of a daily check found wrong (ids, events, keys)"),
            DAILY_CHECKS_LAST_RUN: m.create_gauge_float(
                DAILY_CHECKS_LAST_RUN, "Unix time the last daily checks run finished (0 if never)"),
            STRIPE_CIRCUIT_STATE: m.create_gauge_float(
                STRIPE_CIRCUIT_STATE, "Stripe circuit breaker: 0 closed, 1 open, 2 half-open (from Postgres)"),
            READBACK_CYCLE_STARTED: m.create_gauge_float(
                READBACK_CYCLE_STARTED, "Unix time the rolling read-back's current cycle began (0 if none yet)"),
            READBACK_CYCLE_PROGRESS: m.create_gauge_float(
                READBACK_CYCLE_PROGRESS, "Customers the read-back's current cycle has read / customers"),
            READBACK_BEHIND: m.create_gauge_float(
                READBACK_BEHIND, "1 when the latest read-back slice could not read every customer due within its "
                "budget share (behind pace), else 0"),
            READBACK_LAST_CYCLE: m.create_gauge_float(
                READBACK_LAST_CYCLE, "Unix time the last read-back cycle completed (0 if none yet)"),
        }


_instruments = _Instruments(MetricMeter.noop)


def install(meter: MetricMeter) -> None:
    """Create our instruments on this meter (the Temporal runtime's `metric_meter`)."""
    global _instruments
    _instruments = _Instruments(meter)


def _add(name: str, value: int, labels: Mapping[str, str]) -> None:
    # Adding 0 still creates the series: `increase()` then sees 0, not "no data".
    if value >= 0:
        _instruments.counters[name].add(value, dict(labels))


def set_gauge(name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
    _instruments.gauges[name].set(float(value), dict(labels or {}))


# --- reconciliation -----------------------------------------------------------------------------


def record_run_finished(
    *, kind: str, mode: str, status: str, seconds: float | None, counts: Mapping[str, int],
    discrepancies: Iterable[tuple[str, str, int]],
) -> None:
    """A run finished (called once per run by the `finish_run` activity). `discrepancies` are
    (finding kind, action or "none", number of findings)."""
    labels = {"kind": kind}
    _add(RUNS, 1, {"kind": kind, "mode": mode, "status": status})
    if seconds is not None:
        _instruments.histograms[DURATION].record(
            max(0.0, seconds), {"kind": kind, "mode": mode, "status": status})
    _add(DRIFT, counts.get("drift_count", 0), labels)
    _add(DEDUPE, counts.get("dedupe_count", 0), labels)
    _add(FAILURES, counts.get("reconcile_failures", 0), labels)
    _add(OVER_QUOTA, counts.get("over_quota_transitions", 0), labels)
    _add(CORRECTIONS, counts.get("corrections_pushed", 0), {"kind": kind, "action": "pushed"})
    _add(CORRECTIONS, counts.get("corrections_cancelled", 0), {"kind": kind, "action": "cancelled"})
    for finding, action, n in discrepancies:
        _add(DISCREPANCIES, n, {"kind": finding, "action": action})


# --- Stripe -------------------------------------------------------------------------------------


def record_stripe_request(operation: str, status: str, seconds: float) -> None:
    """One HTTP request to Stripe: `status` is the HTTP status code, or `network_error`."""
    _add(STRIPE_REQUESTS, 1, {"operation": operation, "status": status})
    _instruments.histograms[STRIPE_DURATION].record(max(0.0, seconds), {"operation": operation})


def record_stripe_retry(operation: str, reason: str) -> None:
    _add(STRIPE_RETRIES, 1, {"operation": operation, "reason": reason})


# --- webhooks (called by the receiver and the event handlers) ------------------------------------


def record_webhook_received(outcome: str) -> None:
    """One POST /webhooks/stripe answered. outcome: `stored` (new event durable, 200),
    `duplicate` (already in the inbox, 200), `bad_signature` (400, nothing stored), `invalid`
    (400: unparseable body), `error` (5xx: not stored, Stripe will retry)."""
    _add(WEBHOOK_RECEIVED, 1, {"outcome": outcome if outcome in WEBHOOK_OUTCOMES else "error"})


def event_type_family(event_type: str) -> str:
    """`customer.subscription.updated` -> `customer.subscription`; `invoice.paid` -> `invoice`:
    a bounded label (Stripe has a few dozen families, hundreds of types)."""
    parts = event_type.split(".")
    return ".".join(parts[:-1]) if len(parts) > 1 else event_type or "unknown"


def record_webhook_processed(type_family: str, status: str) -> None:
    """A Stripe event was handled (by ProcessStripeEvent or ReplayWebhooks): `status` is the
    inbox status it ended in (`processed`, `ignored`, `failed`). Pass
    `event_type_family(event.type)` as `type_family`."""
    _add(WEBHOOK_PROCESSED, 1, {"type_family": type_family,
                                "status": status if status in WEBHOOK_STATUSES else "failed"})


# --- notifications (notify/) ----------------------------------------------------------------------


def record_notification(kind: str, target: str, outcome: str) -> None:
    """One delivery attempt of a notification to a target: `sent`, `retry` (transient failure,
    tried again later), `failed` (given up: a refusal, or the attempts ran out) or `no_target`
    (target `none`: recorded, but no target is configured)."""
    _add(NOTIFICATIONS, 1, {"kind": kind, "target": target, "outcome": outcome})
