"""The benchmark's own local stack, started and stopped by the benchmark: an embedded Postgres, the
Stripe emulator, the Temporal dev server (SQLite file, the pragmas `dev up` uses) and the worker,
each its own process so that the worker's memory can be read from /proc."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from devstack.components import (
    emulator_command,
    spawn_emulator,
    spawn_temporal,
    spawn_worker,
    temporal_command,
)
from devstack.postgres import TempPostgres
from devstack.processes import free_port, log_size, terminate

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 30.0
LOOPBACK = "127.0.0.1"


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of a process (and, with `children`, of its live descendants)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *(proc.children(recursive=True) if children else [])]
        root = proc.cpu_times()
        # Backends that have exited (the worker's pool closed) are in the postmaster's children_*.
        total = root.children_user + root.children_system if children else 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return float("nan")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the peak resident set size of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stack:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="recon-bench-"))
        self.pg: TempPostgres | None = None
        self.dsn = ""
        self.emulator_url = ""
        self.temporal_address = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {name: self.folder / f"{name}.log"
                                      for name in ("emulator", "temporal", "worker")}

    # ------------------------------------------------------------------ processes

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        # SIGINT for the worker: under py-spy, that makes it write the profile.
        terminate(proc.pid, STOP_TIMEOUT, sig=signal.SIGINT if name == "worker" else signal.SIGTERM)

    async def start(self) -> None:
        self.pg = await TempPostgres.start("bench", prefix="recon-bench-pg-")
        self.dsn = self.pg.dsn
        await asyncio.to_thread(self._start_emulator)
        await asyncio.to_thread(self._start_temporal)

    def _start_emulator(self) -> None:
        port = free_port()
        self.emulator_url = f"http://{LOOPBACK}:{port}"
        command = emulator_command(host=LOOPBACK, port=port, rate_limit=0)
        self.procs["emulator"] = spawn_emulator(self.logs["emulator"], command, self.emulator_url, cwd=ROOT)

    def _start_temporal(self) -> None:
        port = free_port()
        self.temporal_address = f"{LOOPBACK}:{port}"
        command = temporal_command(db_file=self.folder / "temporal.db", host=LOOPBACK, port=port,
                                   ui_port=None, log_level="error")
        self.procs["temporal"] = spawn_temporal(self.logs["temporal"], command, LOOPBACK, port)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the emulator, the dev server and Postgres (all backends)."""
        out: dict[str, float] = {name: cpu_seconds(self.procs[name].pid) for name in ("emulator", "temporal") if name in self.procs}
        if self.pg is not None:
            out["postgres"] = cpu_seconds(self.pg.pid, children=True)
        return out

    def start_worker(self, env: dict[str, str], profile: str | None = None) -> int:
        """`python -m worker` (the production entry point) with the given settings; its pid.
        `profile`: a py-spy binary; the worker then runs under `py-spy record` (collapsed stacks
        in worker.profile.txt in the bench folder) and the pid is py-spy's child's."""
        self._stop("worker")
        command = None
        if profile:
            command = [profile, "record", "--rate", "50", "--format", "raw", "--nonblocking",
                       "--output", str(self.folder / "worker.profile.txt"), "--", sys.executable, "-m", "worker"]
        proc = spawn_worker(self.logs["worker"], {
            "DATABASE_URL": self.dsn, "STRIPE_API_BASE": self.emulator_url,
            "TEMPORAL_ADDRESS": self.temporal_address, **env}, command=command, cwd=ROOT)
        self.procs["worker"] = proc
        if profile:
            return int(psutil.Process(proc.pid).children()[0].pid)
        return proc.pid

    def worker_log_since(self, offset: int) -> str:
        with open(self.logs["worker"], "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def worker_log_size(self) -> int:
        return log_size(self.logs["worker"])

    def stop_worker(self) -> None:
        self._stop("worker")

    async def stop(self, keep: bool = False) -> None:
        for name in ("worker", "temporal", "emulator"):
            self._stop(name)
        if self.pg is not None:
            await self.pg.close()
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
