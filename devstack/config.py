"""Names, defaults, `StackConfig` and the state the stack records (stack.json)."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from billing import database_url as billing_database_url
from billing.settings import Settings, get_settings

# --- names and defaults -------------------------------------------------------------------------

TEMPORAL = "temporal"
POSTGRES = "postgres"
EMULATOR = "emulator"
WORKER = "worker"
WEBHOOKS = "webhooks"
CONSOLE = "console"
# Start order; `down` stops in reverse.
COMPONENTS = (TEMPORAL, POSTGRES, EMULATOR, WORKER, WEBHOOKS, CONSOLE)

DEFAULT_TEMPORAL_PORT = 7233
# The dev worker's Prometheus endpoint unless METRICS_BIND_ADDRESS says otherwise.
DEFAULT_DEV_METRICS_ADDRESS = "127.0.0.1:9464"
DEFAULT_DEV_WEBHOOK_METRICS_ADDRESS = "127.0.0.1:9465"  # the receiver's own endpoint
DEFAULT_EMULATOR_RATE_LIMIT = 25.0  # Stripe test mode: 25 requests/s
DATABASE_NAME = "billing"

# The one file billing.database_url reads (its top-level `database_url`).
STACK_FILE = billing_database_url.STACK_FILE
LOCK_FILE = "stack.lock"
LOG_DIR = "logs"
PGDATA_DIR = "pgdata"
TEMPORAL_DB = "temporal.db"
EMULATOR_STATE = "emulator-state.pickle"  # its temp file, `<name>.tmp`, is covered below
CONSOLE_TOKEN_FILE = "console-token"  # the local console's sign-in token (mode 0600)
# What a state folder may contain; `down --purge` refuses to delete anything else.
STATE_ENTRIES = {STACK_FILE, LOCK_FILE, LOG_DIR, PGDATA_DIR, TEMPORAL_DB, EMULATOR_STATE, CONSOLE_TOKEN_FILE}
STATE_ENTRY_PREFIXES = (TEMPORAL_DB,)  # temporal.db-wal, temporal.db-shm

STARTUP_TIMEOUT_SECONDS = 60.0
WORKER_STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
WORKER_READY_MARKER = "worker started"
LOG_TAIL_LINES = 40


class StackError(RuntimeError):
    """A component could not be started or stopped; the message says why (with its log tail)."""


class StackNotRunning(StackError):
    """The caller needs a running stack and there is none."""


# --- configuration ------------------------------------------------------------------------------


class StackConfig(BaseModel):
    """Where and how the local stack runs. Build it with `StackConfig.from_settings()`."""

    state_dir: Path
    temporal_host: str = "localhost"
    temporal_port: int = DEFAULT_TEMPORAL_PORT
    temporal_ui_port: int = 8233
    # None: the dev server picks a free port.
    temporal_http_port: int | None = None
    temporal_metrics_port: int | None = None
    emulator_host: str = "127.0.0.1"
    emulator_port: int = 12111
    emulator_rate_limit: float = DEFAULT_EMULATOR_RATE_LIMIT
    emulator_summary_lag_seconds: float | None = None
    webhook_secret: str = "whsec_emulator"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8088
    console_host: str = "127.0.0.1"
    console_port: int = 8090
    # Prometheus endpoints of the worker and the receiver ("" = none); None: the default
    # address when its port is free (a second stack then runs without one instead of failing).
    worker_metrics_address: str | None = None
    webhook_metrics_address: str | None = None
    task_queue: str = "billing-recon"
    # Set -> use this Postgres, start no embedded one.
    database_url: str | None = None
    # Working directory of the Python subprocesses (`-m stripe_emulator`, `-m worker`).
    cwd: Path = Field(default_factory=Path.cwd)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> StackConfig:
        s = settings or get_settings()
        values: dict[str, Any] = {
            "state_dir": s.state_dir,
            "temporal_port": s.temporal_port,
            "temporal_ui_port": s.temporal_ui_port,
            "temporal_http_port": s.temporal_http_port,
            "temporal_metrics_port": s.temporal_metrics_port,
            "emulator_host": s.emulator_host,
            "emulator_port": s.emulator_port,
            "emulator_rate_limit": s.emulator_rate_limit,
            "emulator_summary_lag_seconds": s.emulator_summary_lag_seconds,
            "worker_metrics_address": (
                s.metrics_bind_address if s.metrics_bind_address_set() else None
            ),
            "webhook_metrics_address": s.webhook_metrics_bind_address,
            "webhook_secret": s.stripe_webhook_secret,
            "webhook_host": s.webhook_host,
            "webhook_port": s.webhook_port,
            "task_queue": s.task_queue,
            "database_url": s.database_url,
            **_console_address(),
        }
        values.update(overrides)
        config = cls(**values)
        config.state_dir = config.state_dir.expanduser().resolve()
        return config

    @property
    def console_url(self) -> str:
        return f"http://{self.console_host}:{self.console_port}"

    @property
    def console_token_file(self) -> Path:
        return self.state_dir / CONSOLE_TOKEN_FILE

    @property
    def temporal_address(self) -> str:
        return f"{self.temporal_host}:{self.temporal_port}"

    def temporal_ports(self) -> dict[str, int]:
        """Every dev-server port that is set, by the setting that sets it."""
        ports = {
            "BILLING_TEMPORAL_PORT": self.temporal_port,
            "TEMPORAL_UI_PORT": self.temporal_ui_port,
            "BILLING_TEMPORAL_HTTP_PORT": self.temporal_http_port,
            "BILLING_TEMPORAL_METRICS_PORT": self.temporal_metrics_port,
        }
        return {name: port for name, port in ports.items() if port is not None}

    @property
    def temporal_ui_url(self) -> str:
        return f"http://localhost:{self.temporal_ui_port}"

    @property
    def stripe_api_base(self) -> str:
        return f"http://{self.emulator_host}:{self.emulator_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://{self.webhook_host}:{self.webhook_port}/webhooks/stripe"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / LOG_DIR

    @property
    def pgdata(self) -> Path:
        return self.state_dir / PGDATA_DIR

    @property
    def stack_file(self) -> Path:
        return self.state_dir / STACK_FILE

    @property
    def emulator_state_file(self) -> Path:
        return self.state_dir / EMULATOR_STATE

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"


# --- recorded state (stack.json) ----------------------------------------------------------------


class ComponentRecord(BaseModel):
    name: str
    pid: int
    # psutil create_time of the process: tells our process from a recycled pid.
    create_time: float
    address: str
    host: str | None = None
    port: int | None = None
    log: Path
    command: list[str] = []
    pgdata: Path | None = None  # Postgres only
    started_at: float = Field(default_factory=time.time)


class StackState(BaseModel):
    """stack.json. Its top-level `database_url` is a contract with `billing.database_url`: set
    while the stack serves a database, cleared by `down`."""

    components: dict[str, ComponentRecord] = {}
    temporal_address: str | None = None
    temporal_ui_url: str | None = None
    database_url: str | None = None
    # Where the embedded Postgres serves (kept across `down`): a DATABASE_URL equal to it was
    # exported by `dev env` and names our own server, not an external one.
    embedded_database_url: str | None = None
    stripe_api_base: str | None = None
    task_queue: str | None = None
    log_dir: Path | None = None


class StackInfo(BaseModel):
    """Every address of a running stack (what `up` returns and `dev env` prints)."""

    temporal_address: str
    temporal_ui_url: str
    database_url: str
    stripe_api_base: str
    task_queue: str
    log_dir: Path
    state_dir: Path
    # Names of the components this call started (the others were already running or external).
    started: list[str] = []
    components: dict[str, ComponentRecord] = {}

    def env(self) -> dict[str, str]:
        """The environment a worker or CLI needs to talk to this stack."""
        return {
            "DATABASE_URL": self.database_url,
            "STRIPE_API_BASE": self.stripe_api_base,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "BILLING_TASK_QUEUE": self.task_queue,
            "BILLING_STATE_DIR": str(self.state_dir),
        }

    def address_lines(self) -> list[tuple[str, str]]:
        """(label, address) pairs for printing."""
        webhooks = self.components.get(WEBHOOKS)
        console = self.components.get(CONSOLE)
        return [
            ("Temporal gRPC", self.temporal_address),
            ("Temporal UI", self.temporal_ui_url),
            ("DATABASE_URL", self.database_url),
            ("STRIPE_API_BASE", self.stripe_api_base),
            ("Task queue", self.task_queue),
            *([("Webhooks", webhooks.address)] if webhooks is not None else []),
            *([("Console", console.address)] if console is not None else []),
            ("Logs", str(self.log_dir)),
        ]


ComponentState = Literal["running", "dead", "stopped", "external"]


class ComponentStatus(BaseModel):
    name: str
    state: ComponentState
    pid: int | None = None
    address: str | None = None
    log: Path | None = None
    detail: str = ""


class StackStatus(BaseModel):
    state_dir: Path
    components: list[ComponentStatus]

    @property
    def dead(self) -> list[ComponentStatus]:
        return [c for c in self.components if c.state == "dead"]

    @property
    def running(self) -> list[ComponentStatus]:
        return [c for c in self.components if c.state == "running"]

    @property
    def recorded(self) -> bool:
        return any(c.state in ("running", "dead") for c in self.components)


def _console_address() -> dict[str, Any]:
    """CONSOLE_HOST / CONSOLE_PORT (console.settings), the console's address under `dev up` too."""
    from console.settings import ConsoleSettings

    c = ConsoleSettings()  # read now, not cached: a test's stack sets its own port
    return {"console_host": c.host, "console_port": c.port}


def load_state(state_dir: Path) -> StackState:
    path = state_dir / STACK_FILE
    if not path.exists():
        return StackState()
    return StackState.model_validate_json(path.read_text())


def save_state(config: StackConfig, state: StackState) -> None:
    path = config.stack_file
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(path)


@contextlib.contextmanager
def locked(config: StackConfig) -> Iterator[None]:
    """Serialises `up` and `down` of one state folder (also across processes)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with open(config.state_dir / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
