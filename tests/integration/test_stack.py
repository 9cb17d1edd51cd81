"""`devstack` up/status/down against real processes, in a temp state folder on free ports
(never 7233/8233/12111), configured through the same environment variables a developer would
use, so it never touches a developer's running stack."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import stripe
from temporalio.client import Client

import devstack as stack
from billing.database_url import DatabaseNotConfigured, resolve_database_url
from billing.settings import Settings
from common.ui import SEARCH_ATTRIBUTES
from common.ui_setup import registered
from devstack.postgres import embedded_server, postgres_pid
from devstack.processes import free_ports, http_ok, live_process

pytestmark = pytest.mark.integration

DEFAULT_PORTS = {7233, 8233, 12111}


@pytest.fixture
def stack_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Environment of a private stack; `down` runs at the end whatever the test did."""
    temporal_port, ui_port, emulator_port, webhook_port = free_ports(4, avoid=DEFAULT_PORTS)
    # Not under pytest's tmp_path: a concurrent pytest session resets /tmp/pytest-of-<user> to
    # 0700, which locks out the embedded Postgres' own user when we run as root. Short, too:
    # the Postgres unix socket lives in pgdata (108-byte limit).
    folder = Path(tempfile.mkdtemp(prefix="devstack-test-"))
    state_dir = folder / "st"
    for key in ("DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_BASE", "BILLING_TEMPORAL_HTTP_PORT",
                "BILLING_TEMPORAL_METRICS_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BILLING_STATE_DIR", str(state_dir))
    monkeypatch.setenv("BILLING_TEMPORAL_PORT", str(temporal_port))
    monkeypatch.setenv("TEMPORAL_UI_PORT", str(ui_port))
    monkeypatch.setenv("EMULATOR_PORT", str(emulator_port))
    monkeypatch.setenv("WEBHOOK_PORT", str(webhook_port))
    monkeypatch.setenv("BILLING_TASK_QUEUE", f"stack-test-{temporal_port}")
    settings = Settings()
    try:
        yield settings
    finally:
        stack.down(stack.StackConfig.from_settings(settings))
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process `up` did not start: `down` must leave it alone."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _alive(record: stack.ComponentRecord) -> bool:
    return live_process(record.pid, record.create_time) is not None


async def test_up_twice_status_down(
    stack_env: Settings, bystander: subprocess.Popen[bytes]
) -> None:
    config = stack.StackConfig.from_settings(stack_env)
    assert config.temporal_port not in DEFAULT_PORTS
    first = await stack.aup(config, worker=False)
    assert first.started == [stack.TEMPORAL, stack.POSTGRES, stack.EMULATOR]
    assert first.temporal_address == f"localhost:{config.temporal_port}"
    assert first.stripe_api_base == f"http://127.0.0.1:{config.emulator_port}"
    assert first.temporal_ui_url == f"http://localhost:{config.temporal_ui_port}"
    assert (config.state_dir / "stack.json").exists()

    # Up again: everything is detected as running and left alone.
    second = await stack.aup(config, worker=False)
    assert second.started == []
    assert {n: r.pid for n, r in second.components.items()} == {
        n: r.pid for n, r in first.components.items()
    }

    result = stack.status(config)
    states = {c.name: c.state for c in result.components}
    assert states == {
        stack.TEMPORAL: "running",
        stack.POSTGRES: "running",
        stack.EMULATOR: "running",
        stack.WORKER: "stopped",
        stack.WEBHOOKS: "stopped",
    }
    assert not result.dead

    # DATABASE_URL resolves to the embedded server, and the schema is migrated.
    url = resolve_database_url(stack_env)
    assert url == first.database_url
    conn = await asyncpg.connect(url)
    try:
        versions = await conn.fetch("SELECT version FROM public.billing_schema_migrations")
        assert versions
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'billing'")
        assert tables > 0
    finally:
        await conn.close()
    assert stack.info(config).env()["DATABASE_URL"] == url
    # Our search attributes are registered in the dev server's namespace (docs/temporal-ui.md).
    have = await registered(await Client.connect(first.temporal_address))
    assert {k.name: int(k.indexed_value_type) for k in SEARCH_ATTRIBUTES}.items() <= have.items()

    # A dead component is reported, and `up` restarts only that one.
    emulator = first.components[stack.EMULATOR]
    os.killpg(emulator.pid, signal.SIGKILL)
    psutil.Process(emulator.pid).wait(5)
    dead = stack.status(config).dead
    assert [c.name for c in dead] == [stack.EMULATOR]
    third = await stack.aup(config, worker=False)
    assert third.started == [stack.EMULATOR]
    records = third.components

    stopped = await stack.adown(config)
    assert sorted(stopped) == sorted([stack.TEMPORAL, stack.POSTGRES, stack.EMULATOR])
    for record in records.values():
        assert not _alive(record), record.name
    assert bystander.poll() is None, "down must stop only what up started"
    # Data stays; the database is gone until the next `up`.
    assert (config.state_dir / "pgdata" / "PG_VERSION").exists()
    assert (config.state_dir / "temporal.db").exists()
    with pytest.raises(DatabaseNotConfigured, match="dev up"):
        resolve_database_url(stack_env)
    assert not stack.status(config).recorded


async def test_worker_and_webhook_receiver_are_started_wired_and_stopped(stack_env: Settings) -> None:
    config = stack.StackConfig.from_settings(stack_env)
    info = await stack.aup(config, worker=True)
    worker, receiver = info.components[stack.WORKER], info.components[stack.WEBHOOKS]
    assert _alive(worker) and _alive(receiver)
    assert stack.WORKER_READY_MARKER in worker.log.read_text()
    assert receiver.address == config.webhook_url
    again = await stack.aup(config, worker=True)
    assert again.started == []

    # The emulator delivers to the receiver (one endpoint, however often `up` ran), the worker
    # processes: a customer created in "Stripe" lands in billing.customers.
    client = stripe.StripeClient("sk_test_stack", base_addresses={"api": info.stripe_api_base})
    endpoints = (await client.v1.webhook_endpoints.list_async()).data
    assert [e.url for e in endpoints] == [config.webhook_url]
    cus = await client.v1.customers.create_async(params={"name": "Wired", "metadata": {"customer_id": "app-wired"}})
    conn = await asyncpg.connect(info.database_url)
    try:
        found = None
        for _ in range(150):
            found = await conn.fetchrow(
                "SELECT c.customer_id, e.status FROM billing.customers c JOIN billing.stripe_events e "
                "ON e.object_id = c.stripe_customer_id WHERE c.stripe_customer_id = $1", cus.id)
            if found is not None:
                break
            await asyncio.sleep(0.2)
        assert found is not None and tuple(found) == ("app-wired", "processed")
    finally:
        await conn.close()
    await stack.adown(config, purge=True)
    assert not _alive(worker) and not _alive(receiver)
    assert not config.state_dir.exists()


async def test_stripe_state_survives_down_up_and_purge_removes_it(stack_env: Settings) -> None:
    config = stack.StackConfig.from_settings(stack_env)
    info = await stack.aup(config, worker=False)
    url = info.stripe_api_base
    client = stripe.StripeClient("sk_test_stack", base_addresses={"api": url, "meter_events": url})
    customer = await client.v1.customers.create_async(params={"email": "kept@example.com"})

    await stack.adown(config)
    assert (config.state_dir / stack.EMULATOR_STATE).exists()
    again = await stack.aup(config, worker=False)
    assert stack.EMULATOR in again.started
    found = await client.v1.customers.retrieve_async(customer.id)
    assert found.id == customer.id and found.email == "kept@example.com"

    await stack.adown(config, purge=True)
    assert not config.state_dir.exists()


def test_port_taken_by_a_foreign_process_fails_loudly(stack_env: Settings) -> None:
    config = stack.StackConfig.from_settings(stack_env)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", config.temporal_port))
        sock.listen()
        with pytest.raises(stack.StackError, match="already in use"):
            stack.up(config, worker=False)
    assert not stack.status(config).recorded


def test_resolve_database_url_prefers_database_url(
    stack_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DatabaseNotConfigured, match="billing-recon dev up"):
        resolve_database_url(stack_env)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.example/billing")
    assert resolve_database_url(Settings()) == "postgresql://u@db.example/billing"


def test_a_command_without_a_database_says_what_to_do(stack_env: Settings) -> None:
    """No DATABASE_URL and no stack: one clear line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-c", "from starter.cli import main; main()", "migrate"],
        env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "No database: DATABASE_URL is not set" in result.stderr
    assert "Run `billing-recon dev up` (or set DATABASE_URL)" in result.stderr


# --- through the real CLI ----------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from starter.cli import main; main()", *args],
        env={**env, "COLUMNS": "200", "NO_COLOR": "1"}, capture_output=True, text=True, timeout=180,
    )


def _exports(stdout: str) -> dict[str, str]:
    """What `eval "$(billing-recon dev env)"` puts into a shell."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in stdout.splitlines())
    return {key: shlex.split(value)[0] for key, value in pairs}


def test_after_dev_env_dev_up_keeps_its_postgres_and_down_stops_it(stack_env: Settings) -> None:
    config = stack.StackConfig.from_settings(stack_env)
    env = dict(os.environ)  # the private stack's settings, no DATABASE_URL
    first = _cli(env, "dev", "up", "--no-worker")
    assert first.returncode == 0, first.stderr
    exported = _exports(_cli(env, "dev", "env").stdout)
    assert exported["DATABASE_URL"] == stack.load_state(config.state_dir).database_url
    shell = {**env, **exported}  # after eval "$(billing-recon dev env)"

    again = _cli(shell, "dev", "up", "--no-worker")
    assert again.returncode == 0, again.stderr
    assert "postgres: already running" in again.stderr and "external" not in again.stderr
    record = stack.load_state(config.state_dir).components[stack.POSTGRES]
    # Commands find the database with the exported DATABASE_URL and without any (stack.json).
    for environment in (shell, env):
        migrate = _cli(environment, "migrate")
        assert (migrate.returncode, migrate.stdout.strip()) == (0, "schema up to date"), migrate.stderr

    down = _cli(shell, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert live_process(record.pid, record.create_time) is None
    assert postgres_pid(config.pgdata) is None and (config.pgdata / "PG_VERSION").exists()

    # The same shell brings it back (not "external"), and --purge stops it before deleting.
    back = _cli(shell, "dev", "up", "--no-worker")
    assert back.returncode == 0, back.stderr
    assert stack.POSTGRES in stack.load_state(config.state_dir).components
    pid = postgres_pid(config.pgdata)
    assert pid is not None
    purge = _cli(shell, "dev", "down", "--purge")
    assert purge.returncode == 0, purge.stderr
    assert not psutil.pid_exists(pid) and not config.state_dir.exists()


def test_down_purge_never_deletes_data_under_a_live_process(stack_env: Settings) -> None:
    config = stack.StackConfig.from_settings(stack_env)
    # A server on the stack's pgdata that stack.json does not record (an older `dev up` under an
    # exported DATABASE_URL forgot it), and a process the stack did not start using the folder.
    server = embedded_server(config.pgdata, cleanup_mode=None)
    assert postgres_pid(config.pgdata) == server.get_pid()
    user = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             str(config.state_dir / "temporal.db")])
    try:
        refused = _cli(dict(os.environ), "dev", "down", "--purge")
        assert refused.returncode == 1
        assert f"Refusing to delete {config.state_dir}: still in use by pid {user.pid}" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert postgres_pid(config.pgdata) is None  # `down` stopped the unrecorded server
        assert (config.pgdata / "PG_VERSION").exists()  # and deleted nothing
    finally:
        user.kill()
        user.wait()
    purged = _cli(dict(os.environ), "dev", "down", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not config.state_dir.exists()


def test_every_dev_server_port_is_configurable(stack_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC, UI, HTTP API and metrics: two stacks on one machine need not share any."""
    config = stack.StackConfig.from_settings(stack_env)
    taken = {config.temporal_port, config.temporal_ui_port, config.emulator_port, config.webhook_port}
    http_port, metrics_port = free_ports(2, avoid=DEFAULT_PORTS | taken)
    monkeypatch.setenv("BILLING_TEMPORAL_HTTP_PORT", str(http_port))
    monkeypatch.setenv("BILLING_TEMPORAL_METRICS_PORT", str(metrics_port))
    env = dict(os.environ)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", metrics_port))
        sock.listen()
        refused = _cli(env, "dev", "up", "--no-worker")
    assert refused.returncode == 1
    assert f"Port {metrics_port} is already in use" in refused.stderr
    assert "BILLING_TEMPORAL_METRICS_PORT" in refused.stderr
    assert not stack.status(config).recorded

    started = _cli(env, "dev", "up", "--no-worker")
    assert started.returncode == 0, started.stderr
    temporal = stack.load_state(config.state_dir).components[stack.TEMPORAL]
    listening = {c.laddr.port for c in psutil.Process(temporal.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert {config.temporal_port, config.temporal_ui_port, http_port, metrics_port} <= listening
    assert not listening & DEFAULT_PORTS
    assert http_ok(f"http://127.0.0.1:{metrics_port}/metrics")
    assert http_ok(f"http://127.0.0.1:{http_port}/api/v1/namespaces")
    stopped = _cli(env, "dev", "down")
    assert stopped.returncode == 0, stopped.stderr
