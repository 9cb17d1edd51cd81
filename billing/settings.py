"""Settings from the environment (pydantic-settings): every environment variable the product
reads goes through here (the local stack only *builds* environments for its child processes).

The Temporal connection is *not* configured here: it comes from Temporal's own envconfig
(`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_PROFILE`, TOML profiles); see
`common.client`. The OTLP exporter reads its own `OTEL_EXPORTER_OTLP_*` details.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing.policy import MAX_PAGE_SIZE, MAX_SETTLE_SECONDS

# Where the local stack keeps all of its state (pids, logs, Postgres data, Temporal's SQLite).
DEFAULT_STATE_DIR = Path(".state")

# Secrets written in this repository (defaults, the old docker-compose.yml, tests, benches, docs):
# anyone can read them, so they are accepted only when STRIPE_API_BASE is a Stripe emulator on
# this machine (a loopback address). tests/unit/test_settings_edges.py checks that every
# `sk_test_...`/`whsec_...` literal in the repository is listed here.
PUBLISHED_SECRETS = frozenset({
    "sk_test_emulator", "whsec_emulator",  # the defaults below and of `dev up`
    "whsec_test_emulator", "sk_test_123", "sk_test_stack", "whsec_not_the_secret",  # tests
    "sk_test_emulator_contract", "sk_test_other", "sk_test_x", "whsec_conformance",
    "whsec_test_contract_secret", "whsec_wrong", "whsec_x",  # tests/emulator
    "whsec_chaos", "sk_test_chaos", "sk_test_bench",  # bench/
    "whsec_dev", "sk_test_anything",  # docs/emulator.md
})
# Postgres passwords written in this repository (docker-compose.yml before it required one).
PUBLISHED_DATABASE_PASSWORDS = frozenset({"billing"})


def is_loopback_url(url: str) -> bool:
    """True when `url`'s host is this machine: localhost, 127.0.0.0/8 or ::1."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # Postgres. Unset -> the local stack's database (billing.database_url; devstack runs it).
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    database_pool_min: int = Field(default=1, alias="DATABASE_POOL_MIN")
    database_pool_max: int = Field(default=10, alias="DATABASE_POOL_MAX")

    # Stripe. The official SDK is always the client; in development it points at the emulator.
    stripe_api_key: str = Field(default="sk_test_emulator", alias="STRIPE_API_KEY")
    stripe_api_base: str = Field(default="http://127.0.0.1:12111", alias="STRIPE_API_BASE")
    stripe_webhook_secret: str = Field(default="whsec_emulator", alias="STRIPE_WEBHOOK_SECRET")
    # The signing secret of the event destination sending thin events (async meter errors) to
    # /webhooks/stripe/thin; unset: STRIPE_WEBHOOK_SECRET.
    stripe_event_destination_secret: str | None = Field(default=None, alias="STRIPE_EVENT_DESTINATION_SECRET")
    # Client-side limiter shared by every Stripe call of one worker (ops/s). Test mode allows 25.
    stripe_rate_limit: float = Field(default=20.0, alias="STRIPE_RATE_LIMIT")
    # "shared": every Stripe request also waits for its slot in the budget every worker shares
    # (billing/budget.py: the account's and each endpoint's limits in Postgres, `billing-recon
    # budget set`); "process": only STRIPE_RATE_LIMIT, per worker (tests, a single worker).
    stripe_budget: Literal["shared", "process"] = Field(default="shared", alias="STRIPE_BUDGET")
    stripe_max_network_retries: int = Field(default=2, alias="STRIPE_MAX_NETWORK_RETRIES")
    stripe_timeout_seconds: float = Field(default=30.0, alias="STRIPE_TIMEOUT_SECONDS")

    # Reconciliation policy. Bounded here, where the values enter: a page size of 0 would
    # "complete" having scanned nobody, -1 would fail every page attempt forever.
    recon_epsilon: Decimal = Field(default=Decimal("0.005"), ge=0, lt=1, alias="RECON_EPSILON")
    recon_settle_seconds: int = Field(
        default=600, ge=0, le=MAX_SETTLE_SECONDS, alias="RECON_SETTLE_SECONDS")
    recon_auto_approve_over_reporting: bool = Field(
        default=False, alias="RECON_AUTO_APPROVE_OVER_REPORTING"
    )
    recon_page_size: int = Field(default=500, ge=1, le=MAX_PAGE_SIZE, alias="RECON_PAGE_SIZE")
    # Stripe's invoice finalization grace (1 h default, up to 72 h): used for a period whose
    # draft invoice is not in the mirror (the draft's automatically_finalizes_at wins).
    recon_invoice_grace_seconds: int = Field(default=3600, ge=0, le=259200, alias="RECON_INVOICE_GRACE_SECONDS")
    recon_stripe_concurrency: int = Field(default=8, ge=1, alias="RECON_STRIPE_CONCURRENCY")

    # Webhook receiver (`billing-recon webhooks serve`).
    webhook_host: str = Field(default="127.0.0.1", alias="WEBHOOK_HOST")
    webhook_port: int = Field(default=8088, alias="WEBHOOK_PORT")
    # Stripe's SDK default: a signature older than this is refused (replayed or stale delivery),
    # and so is one dated more than this in the future. 0 would turn replay protection off, so
    # it must be > 0; more than an hour is not clock skew any more.
    webhook_tolerance_seconds: int = Field(default=300, gt=0, le=3600, alias="WEBHOOK_TOLERANCE_SECONDS")
    # Stripe's events are a few KiB; anything this large is not an event. Refused while the body
    # streams in (413), whatever Content-Length says.
    webhook_max_body_bytes: int = Field(default=1_048_576, gt=0, alias="WEBHOOK_MAX_BODY_BYTES")
    # The request head, and then the body, must each arrive within this (else the connection
    # is closed, or 408 for the body): a slow client cannot hold a connection open.
    webhook_read_timeout_seconds: float = Field(default=10.0, gt=0, alias="WEBHOOK_READ_TIMEOUT_SECONDS")
    # Open connections (idle keep-alive ones included) and requests in progress, at most; beyond
    # it uvicorn answers 503 and closes (Stripe retries). Bounds memory to about this many bodies.
    webhook_max_connections: int = Field(default=64, gt=0, alias="WEBHOOK_MAX_CONNECTIONS")
    # An idle keep-alive connection is closed after this many seconds (uvicorn's default).
    webhook_keep_alive_seconds: int = Field(default=5, gt=0, alias="WEBHOOK_KEEP_ALIVE_SECONDS")
    # Each dependency check of GET /health/ready (Postgres query, Temporal gRPC call) gets this long.
    webhook_health_timeout_seconds: float = Field(default=2.0, gt=0, alias="WEBHOOK_HEALTH_TIMEOUT_SECONDS")
    # How long the receiver waits for Temporal before answering anyway (the event is stored).
    webhook_start_timeout_seconds: float = Field(default=5.0, alias="WEBHOOK_START_TIMEOUT_SECONDS")

    # Daily checks (checks/, docs/checks.md): a counter whose key no successful reconciliation
    # covered for this many days is stale; inbox rows received/failed for longer than this many
    # minutes are a backlog (and Stripe events younger than it are not yet counted as missed).
    checks_stale_counter_days: int = Field(default=2, ge=1, le=400, alias="CHECKS_STALE_COUNTER_DAYS")
    checks_backlog_minutes: int = Field(default=60, ge=1, le=10080, alias="CHECKS_BACKLOG_MINUTES")

    # Temporal task queue used by the worker and every starter.
    task_queue: str = Field(default="billing-recon", alias="BILLING_TASK_QUEUE")

    # Local stack (`billing-recon dev up`, package devstack). STATE_DIR also tells every process
    # where to find the stack's database when DATABASE_URL is unset (billing.database_url).
    state_dir: Path = Field(default=DEFAULT_STATE_DIR, alias="BILLING_STATE_DIR")
    emulator_host: str = Field(default="127.0.0.1", alias="EMULATOR_HOST")
    emulator_port: int = Field(default=12111, alias="EMULATOR_PORT")
    # The emulator's own limit (Stripe test mode: 25/s; 0 = none) and meter summary lag
    # (unset: the emulator's default).
    emulator_rate_limit: float = Field(default=25.0, alias="EMULATOR_RATE_LIMIT")
    emulator_summary_lag_seconds: float | None = Field(
        default=None, alias="EMULATOR_SUMMARY_LAG_SECONDS"
    )
    # The dev server's ports: gRPC frontend (what TEMPORAL_ADDRESS points at), web UI, HTTP API
    # and /metrics; unset HTTP/metrics: a free port picked at start. (Its internal history,
    # matching and worker services always take free ports; they cannot be set.)
    temporal_port: int = Field(default=7233, alias="BILLING_TEMPORAL_PORT")
    temporal_ui_port: int = Field(default=8233, alias="TEMPORAL_UI_PORT")
    temporal_http_port: int | None = Field(default=None, alias="BILLING_TEMPORAL_HTTP_PORT")
    temporal_metrics_port: int | None = Field(default=None, alias="BILLING_TEMPORAL_METRICS_PORT")
    # The receiver's metrics endpoint under `dev up`; unset: 127.0.0.1:9465 when free.
    webhook_metrics_bind_address: str | None = Field(
        default=None, alias="WEBHOOK_METRICS_BIND_ADDRESS"
    )
    # Base of the links `audit` and `status` print to workflow runs (Temporal Cloud:
    # https://cloud.temporal.io). Unset: the local dev server's UI.
    temporal_ui_url: str | None = Field(default=None, alias="TEMPORAL_UI_URL")
    # The schedules file (`schedules apply`); unset: billing/schedules.toml.
    schedules_file: Path | None = Field(default=None, alias="BILLING_SCHEDULES_FILE")

    def ui_url(self) -> str:
        return (self.temporal_ui_url or f"http://localhost:{self.temporal_ui_port}").rstrip("/")

    # Observability (see docs/operations.md).
    # host:port of this process's Prometheus endpoint (/metrics): Temporal SDK metrics and ours,
    # served by the Temporal runtime. Empty = no endpoint (tests and ad-hoc workers never fight
    # over a port); `dev up` and docker-compose set it.
    metrics_bind_address: str = Field(default="", alias="METRICS_BIND_ADDRESS")
    # How often a worker re-reads the Postgres-derived gauges (last success, last run's drift,
    # webhook inbox backlog, paused runs).
    metrics_refresh_seconds: float = Field(default=15.0, alias="METRICS_REFRESH_SECONDS")
    # `text` (human) or `json` (one object per line, with workflow/run/correlation ids).
    log_format: str = Field(default="text", alias="LOG_FORMAT", pattern="^(text|json)$")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    # OpenTelemetry: spans are exported over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT (or
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; otherwise nothing is recorded or sent.
    otel_service_name: str = Field(default="billing-recon", alias="OTEL_SERVICE_NAME")
    otel_exporter_otlp_endpoint: str | None = Field(default=None, alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )

    # Dead-man's switch (docs/temporal-ui.md#dead-mans-switch): after each successful run of
    # these schedules, the worker pings this URL (healthchecks-style; `{schedule}` is replaced
    # by the schedule's name, for one check per schedule). Unset: no ping.
    deadman_ping_url: str | None = Field(default=None, alias="DEADMAN_PING_URL")
    deadman_ping_schedules: str = Field(default="usage-sync,usage-readback", alias="DEADMAN_PING_SCHEDULES")
    # Also ping `<url>/fail` after a failed scheduled run (healthchecks alerts at once).
    deadman_ping_on_failure: bool = Field(default=False, alias="DEADMAN_PING_ON_FAILURE")

    # Notifications (notify/, docs/notifications.md). A target is on when its URL or key is set;
    # none set: notifications are recorded in billing.notifications and not sent.
    notify_webhook_url: str | None = Field(default=None, alias="NOTIFY_WEBHOOK_URL")
    notify_slack_webhook_url: str | None = Field(default=None, alias="NOTIFY_SLACK_WEBHOOK_URL")
    notify_pagerduty_routing_key: str | None = Field(default=None, alias="NOTIFY_PAGERDUTY_ROUTING_KEY")
    notify_pagerduty_url: str = Field(
        default="https://events.pagerduty.com/v2/enqueue", alias="NOTIFY_PAGERDUTY_URL")
    # One HTTP request to a target gets this long.
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=300, alias="NOTIFY_TIMEOUT_SECONDS")
    # Attempts per notification before it is marked failed (backoff 5 s doubling to 15 min).
    notify_max_attempts: int = Field(default=12, ge=1, le=1000, alias="NOTIFY_MAX_ATTEMPTS")
    # How often the dispatcher looks for notifications to send and for stuck runs / long pauses.
    notify_poll_seconds: float = Field(default=5.0, ge=0.2, le=3600, alias="NOTIFY_POLL_SECONDS")
    # A run not finished this long after it started is reported stuck (awaiting approval excepted).
    notify_stuck_run_seconds: int = Field(default=6 * 3600, ge=60, alias="NOTIFY_STUCK_RUN_SECONDS")
    # Auto-healing paused this long is reported (the BillingAutoHealingPausedTooLong threshold).
    notify_paused_too_long_seconds: int = Field(default=4 * 3600, ge=60, alias="NOTIFY_PAUSED_TOO_LONG_SECONDS")

    # Stripe circuit breaker (circuit/, docs/circuit-breaker.md): when, over the window, Stripe
    # errors (5xx, network errors and timeouts, 429s left after the gateway's retries, async
    # meter errors) are at least MIN_ERRORS and at least ERROR_RATE of the requests, auto-healing
    # is paused (actor circuit-breaker) until a probe after OPEN_SECONDS succeeds.
    stripe_circuit_enabled: bool = Field(default=True, alias="STRIPE_CIRCUIT_ENABLED")
    stripe_circuit_window_seconds: int = Field(default=60, ge=5, le=3600, alias="STRIPE_CIRCUIT_WINDOW_SECONDS")
    stripe_circuit_min_errors: int = Field(default=20, ge=1, alias="STRIPE_CIRCUIT_MIN_ERRORS")
    stripe_circuit_error_rate: float = Field(default=0.5, gt=0, le=1, alias="STRIPE_CIRCUIT_ERROR_RATE")
    stripe_circuit_open_seconds: int = Field(default=120, ge=1, le=86400, alias="STRIPE_CIRCUIT_OPEN_SECONDS")
    stripe_circuit_check_seconds: float = Field(default=10.0, ge=0.5, le=600, alias="STRIPE_CIRCUIT_CHECK_SECONDS")
    # How often each worker adds its Stripe outcomes to billing.stripe_call_tally.
    stripe_circuit_flush_seconds: float = Field(default=2.0, ge=0.2, le=60, alias="STRIPE_CIRCUIT_FLUSH_SECONDS")

    # CLI: a caller's (a script's, a CI job's) own correlation id, carried into workflows,
    # activities, audit rows and logs; unset: a new id per command.
    correlation_id: str | None = Field(default=None, alias="BILLING_CORRELATION_ID")
    # Who `pause`/`resume`/`approve` record when --actor is not given: BILLING_ACTOR, else the
    # login name (USER), else "cli".
    billing_actor: str | None = Field(default=None, alias="BILLING_ACTOR")
    login_user: str | None = Field(default=None, alias="USER")

    @field_validator("deadman_ping_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"DEADMAN_PING_URL must be an http(s) URL, not {value!r}")
        return value.strip()

    def deadman_schedules(self) -> set[str]:
        """The schedule names (billing/schedules.toml) whose successful runs ping."""
        return {n.strip() for n in self.deadman_ping_schedules.split(",") if n.strip()}

    @field_validator(
        "emulator_summary_lag_seconds", "temporal_http_port", "temporal_metrics_port",
        "notify_webhook_url", "notify_slack_webhook_url", "notify_pagerduty_routing_key", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def actor(self) -> str:
        return self.billing_actor or self.login_user or "cli"

    def tracing_configured(self) -> bool:
        """An OTLP endpoint is set (the exporter reads the other OTEL_EXPORTER_OTLP_* itself)."""
        return bool(self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint)

    def metrics_bind_address_set(self) -> bool:
        """METRICS_BIND_ADDRESS was given (even empty: no endpoint), not just defaulted."""
        return "metrics_bind_address" in self.model_fields_set

    @model_validator(mode="after")
    def _no_published_secret_outside_the_local_stack(self) -> Self:
        if is_loopback_url(self.stripe_api_base):
            return self  # the local stack: the emulator on this machine
        published = []
        if self.stripe_api_key in PUBLISHED_SECRETS:
            published.append("STRIPE_API_KEY")
        if self.stripe_webhook_secret in PUBLISHED_SECRETS:
            published.append("STRIPE_WEBHOOK_SECRET")
        if self.database_url and urllib.parse.urlsplit(self.database_url).password in PUBLISHED_DATABASE_PASSWORDS:
            published.append("the DATABASE_URL password")
        if published:
            names = " and ".join([", ".join(published[:-1]), published[-1]] if len(published) > 1 else published)
            raise ValueError(
                f"{names} {'is a' if len(published) == 1 else 'are'} published default "
                f"secret{'s' * (len(published) > 1)}, accepted only with a local Stripe emulator "
                f"(STRIPE_API_BASE on a loopback address, not {self.stripe_api_base}): set your own")
        return self


class InvalidSettings(SystemExit):
    """The environment does not make valid Settings. A SystemExit carrying one line: every entry
    point (the CLI, `python -m worker`, `python -m webhooks`) prints it and exits 1, without a
    traceback."""


def settings_error_line(error: ValidationError) -> str:
    """One line naming every invalid variable and why (secret values are never echoed)."""
    aliases = {name: (f.alias or name).upper() for name, f in Settings.model_fields.items()}
    parts = []
    for e in error.errors():
        message = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:
            parts.append(message)
            continue
        name = aliases.get(str(e["loc"][0]), str(e["loc"][0]))
        secret = any(word in name for word in ("KEY", "SECRET", "URL", "PASSWORD"))
        parts.append(f"{name}: {message}" + ("" if secret else f" (got {e['input']!r})"))
    return "invalid settings: " + "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        raise InvalidSettings(settings_error_line(e)) from None
