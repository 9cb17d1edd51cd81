"""Start the emulator as a real subprocess once per session; reset its state per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.components import emulator_command, spawn_emulator
from devstack.processes import free_port, terminate
from stripe_emulator.admin import EmulatorAdmin

from .helpers import make_client

# Stripe's example objects, vendored (see fixtures/README.md); STRIPE_FIXTURES overrides.
FIXTURES = Path(os.environ.get("STRIPE_FIXTURES", Path(__file__).parent / "fixtures" / "stripe_fixtures3.json"))

# Test-friendly defaults applied on every reset (rate limit off unless a test turns it on).
BASE_CONFIG: dict[str, Any] = {
    "rate_limit": 0,
    "summary_lag_seconds": 0,
    "identifier_dedupe_seconds": 86400,
    "drop_webhooks": False,
    "webhook_retry_schedule_seconds": [0.2, 0.2, 0.2],
    "faults": [],
    "seed": 0,
}


@pytest.fixture(scope="session")
def emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    host, port = "127.0.0.1", free_port()
    url = f"http://{host}:{port}"
    log = tmp_path_factory.mktemp("emulator-contract") / "emulator.log"
    command = emulator_command(host=host, port=port, log_level="warning")
    proc = spawn_emulator(log, command, url)  # fails with the log's tail
    try:
        yield url
    finally:
        terminate(proc.pid, 5)


@pytest.fixture(scope="session")
async def admin(emulator_url: str) -> AsyncIterator[EmulatorAdmin]:
    async with EmulatorAdmin(emulator_url) as a:
        yield a


@pytest.fixture(scope="session")
def client(emulator_url: str) -> stripe.StripeClient:
    return make_client(emulator_url)


@pytest.fixture(autouse=True)
async def _reset(admin: EmulatorAdmin) -> None:
    await admin.reset(reset_config=True, config=BASE_CONFIG)


@pytest.fixture(scope="session")
def fixtures() -> dict[str, Any]:
    return json.loads(FIXTURES.read_text())["resources"]


class Receiver:
    """A real HTTP webhook receiver; answers the queued statuses first, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.url = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.received.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return Response(status_code=status)

    async def wait_for(self, n: int, within: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while len(self.received) < n:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"expected {n} deliveries, got {len(self.received)}")
            await asyncio.sleep(0.02)


@pytest.fixture(scope="session")
async def _receiver_server() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hook", rec.handle, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 5)


@pytest.fixture
def receiver(_receiver_server: Receiver) -> Receiver:
    _receiver_server.received.clear()
    _receiver_server.statuses.clear()
    return _receiver_server


def pytest_configure(config: pytest.Config) -> None:
    # the stripe SDK's httpx transport passes bytes as data=; not ours to fix
    config.addinivalue_line("filterwarnings", "ignore:Use 'content=<...>':DeprecationWarning")
