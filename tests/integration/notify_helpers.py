"""A local HTTP sink for notifications (the generic JSON webhook target), and what the
notification and circuit tests share: a worker environment, and cleaning up the per-task-queue
singletons the production worker starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client

from circuit.types import circuit_id
from devstack.processes import free_port
from notify.types import dispatcher_id


@dataclass
class Delivery:
    idempotency_key: str
    body: dict[str, Any]


@dataclass
class NotificationSink:
    """Records every POST. `hold_first_seconds`: the first delivery is recorded at once but
    answered only after this long (a worker killed meanwhile sent it and never recorded it)."""

    hold_first_seconds: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    first_received: asyncio.Event = field(default_factory=asyncio.Event)

    async def _post(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.deliveries.append(Delivery(request.headers.get("idempotency-key", ""), body))
        first = not self.first_received.is_set()
        self.first_received.set()
        if first and self.hold_first_seconds:
            await asyncio.sleep(self.hold_first_seconds)
        return JSONResponse({"ok": True})

    def by_key(self) -> dict[str, list[dict[str, Any]]]:
        """Deliveries after the receiver's dedupe on Idempotency-Key: each key's bodies."""
        out: dict[str, list[dict[str, Any]]] = {}
        for d in self.deliveries:
            out.setdefault(d.idempotency_key, []).append(d.body)
        return out

    def kinds(self) -> dict[tuple[str, str], int]:
        """(subject, kind) -> distinct idempotency keys that carried it (1 = delivered once)."""
        out: dict[tuple[str, str], int] = {}
        for bodies in self.by_key().values():
            k = (bodies[0]["subject"], bodies[0]["kind"])
            out[k] = out.get(k, 0) + 1
        return out

    async def wait_for(self, kind: str, limit: float = 60.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            for d in self.deliveries:
                if d.body["kind"] == kind:
                    return d.body
            assert asyncio.get_running_loop().time() < deadline, f"no {kind} notification: {self.deliveries}"
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running_sink(hold_first_seconds: float = 0.0):
    sink = NotificationSink(hold_first_seconds=hold_first_seconds)
    port = free_port()
    app = Starlette(routes=[Route("/hook", sink._post, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the sink did not start"
        await asyncio.sleep(0.05)
    try:
        yield sink, f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def worker_env(postgres_dsn: str, emulator: str, temporal_env: Any, task_queue: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
            "TEMPORAL_ADDRESS": temporal_env.address, "TEMPORAL_NAMESPACE": temporal_env.namespace,
            "BILLING_TASK_QUEUE": task_queue, "STRIPE_RATE_LIMIT": "0", "RECON_SETTLE_SECONDS": "1",
            "NOTIFY_POLL_SECONDS": "0.5", "PYTHONUNBUFFERED": "1", **extra}


async def stop_singletons(client: Client, task_queue: str) -> None:
    """The dispatcher and the circuit a worker started on this test's task queue: terminated,
    so nothing of this test is left running on the shared dev server."""
    for wid in (dispatcher_id(task_queue), circuit_id(task_queue)):
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(wid).terminate("test done")


async def outbox(pool: Any) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT dedupe_key, kind, subject, status, attempts, delivered FROM billing.notifications")
    return [dict(r) for r in rows]


def dumps(x: Any) -> str:
    return json.dumps(x, indent=1, default=str)
