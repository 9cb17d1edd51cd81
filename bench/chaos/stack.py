"""The chaos run's private stack and the faults it can inflict on it.

One private `billing-recon dev` stack (`devstack.up` with its own state folder and free
ports): a **file-backed** Temporal dev server (SQLite, so a restart keeps every workflow), an
embedded Postgres in that folder (so we can restart it with `pg_ctl restart`) and the Stripe
emulator. Workers are real `python -m worker` processes that we SIGKILL and start again.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

import devstack as dev_stack
from devstack.components import spawn_worker
from devstack.postgres import restart_postgres, with_database
from devstack.processes import free_ports, port_open, terminate

ROOT = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT = 90.0
WORKER_STOP_TIMEOUT = 40.0


@dataclass
class FaultLog:
    kills: list[dict] = field(default_factory=list)  # {phase, at, worker_pid, uptime_s}
    temporal_restarts: int = 0
    postgres_restarts: int = 0
    backends_terminated: int = 0
    terminate_rounds: int = 0


class ChaosStack:
    def __init__(self, state_dir: Path, log=print) -> None:
        self.say = log
        temporal_port, ui_port, emulator_port, webhook_port = free_ports(4)
        self.config = dev_stack.StackConfig(
            state_dir=state_dir.resolve(), temporal_host="127.0.0.1", temporal_port=temporal_port,
            temporal_ui_port=ui_port, emulator_port=emulator_port, emulator_rate_limit=0,
            webhook_secret="whsec_chaos", webhook_port=webhook_port, task_queue="chaos", cwd=ROOT)
        self.info: dev_stack.StackInfo | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_started_at = 0.0
        self.worker_env: dict[str, str] = {}
        self.worker_log = self.config.log_dir / "chaos-worker.log"
        self.faults = FaultLog()

    # ------------------------------------------------------------------ components

    def up(self) -> None:
        self.info = dev_stack.up(self.config, worker=False)

    def down(self) -> None:
        self.stop_worker()
        dev_stack.down(self.config)

    @property
    def temporal_address(self) -> str:
        return self.config.temporal_address

    @property
    def stripe_api_base(self) -> str:
        return self.config.stripe_api_base

    def database_url(self, database: str) -> str:
        assert self.info is not None
        return with_database(self.info.database_url, database)

    async def create_database(self, database: str) -> str:
        from billing.db import migrate

        assert self.info is not None
        admin = with_database(self.info.database_url, "postgres")
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        url = self.database_url(database)
        await migrate(url)
        return url

    # ------------------------------------------------------------------ workers

    def start_worker(self) -> None:
        assert self.worker is None or self.worker.poll() is not None
        self.worker = spawn_worker(self.worker_log, self.worker_env, cwd=ROOT, timeout=WORKER_START_TIMEOUT)
        self.worker_started_at = time.monotonic()

    def kill_worker(self, phase: str) -> None:
        """SIGKILL: no graceful shutdown, no heartbeat, no activity completion."""
        assert self.worker is not None
        pid = self.worker.pid
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(10)
        self.faults.kills.append({"phase": phase, "worker_pid": pid,
                                  "uptime_s": round(time.monotonic() - self.worker_started_at, 1)})

    def stop_worker(self) -> None:
        if self.worker is not None:
            terminate(self.worker.pid, WORKER_STOP_TIMEOUT)
            self.worker.poll()  # reaped by terminate
        self.worker = None

    # ------------------------------------------------------------------ server faults

    def restart_temporal(self) -> None:
        """Stop the dev server (SIGTERM) and start it again on the same SQLite file."""
        assert self.info is not None
        state = dev_stack.load_state(self.config.state_dir)
        rec = state.components[dev_stack.TEMPORAL]
        proc = psutil.Process(rec.pid)
        proc.terminate()
        proc.wait(30)
        self.info = dev_stack.up(self.config, worker=False)
        self.faults.temporal_restarts += 1

    def restart_postgres(self) -> None:
        """`pg_ctl restart -m fast`: every connection is cut, the server is down for a moment."""
        restart_postgres(self.config.pgdata)
        self.faults.postgres_restarts += 1

    async def terminate_backends(self, database: str) -> int:
        """`pg_terminate_backend` on every other connection to `database` (the worker's pool)."""
        conn = await asyncpg.connect(self.database_url("postgres"))
        try:
            n = await conn.fetchval(
                """SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                    WHERE datname = $1 AND pid <> pg_backend_pid()) t""", database)
        finally:
            await conn.close()
        self.faults.backends_terminated += int(n or 0)
        self.faults.terminate_rounds += 1
        return int(n or 0)


async def wait_port(host: str, port: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host}:{port} not open within {limit}s")
        await asyncio.sleep(0.2)
