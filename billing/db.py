"""Postgres access: connection pools and the migration runner (plain SQL files, in order).

Applied migrations are never edited (CONTRIBUTING.md): `migrate` records each one's sha256 and
refuses to run when an applied file changed."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from billing.telemetry import instrument_connection

log = logging.getLogger("billing.db")

# Any constant works; it serialises concurrent `migrate` calls (two workers starting at once).
_MIGRATION_LOCK_ID = 0x62696C6C


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    instrument_connection(conn)  # spans per query when tracing is on


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=300
    )


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def migration_files(folder: Path | None = None) -> list[tuple[str, str]]:
    """(version, sql) for every migration, sorted by file name. `folder`: another directory of
    migrations (tests); default: the package's `billing/migrations`."""
    directory: Traversable = folder if folder is not None else resources.files("billing").joinpath("migrations")
    files = sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def checksum(sql: str) -> str:
    """sha256 of a migration's text, line endings normalised (a CRLF checkout is not an edit)."""
    return hashlib.sha256(sql.replace("\r\n", "\n").encode()).hexdigest()


class MigrationError(RuntimeError):
    """The database and the migration files disagree; the message is one line naming the file."""


def check_applied(files: list[tuple[str, str]], recorded: dict[str, str | None]) -> list[str]:
    """Versions applied before checksums were recorded (to record now). Raises MigrationError
    when an applied migration's file differs from what was applied."""
    unrecorded = []
    for version, sql in files:
        if version not in recorded:
            continue
        if recorded[version] is None:
            unrecorded.append(version)
        elif recorded[version] != checksum(sql):
            raise MigrationError(
                f"migration {version}.sql was edited after it was applied (applied sha256 "
                f"{str(recorded[version])[:12]}, file now {checksum(sql)[:12]}): restore it and put the "
                f"change in a new migration (CONTRIBUTING.md)")
    return unrecorded


async def migrate(dsn: str, *, folder: Path | None = None) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return the versions
    applied now. Safe to run any number of times, also concurrently.

    Each applied migration's checksum is recorded; an applied migration whose file changed
    since is refused (MigrationError) before anything is applied. A migration applied before
    checksums existed gets the checksum of its file as it is on the first run after the upgrade
    (it cannot be known what text the database applied then)."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS public.billing_schema_migrations (
                version    text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            -- sha256 of the applied file (billing.db.checksum); NULL: applied before checksums.
            ALTER TABLE public.billing_schema_migrations ADD COLUMN IF NOT EXISTS checksum text;
            """
        )
        recorded = {r["version"]: r["checksum"] for r in await conn.fetch(
            "SELECT version, checksum FROM public.billing_schema_migrations")}
        files = migration_files(folder)
        by_version = dict(files)
        for version in check_applied(files, recorded):
            await conn.execute("UPDATE public.billing_schema_migrations SET checksum = $2 WHERE version = $1",
                               version, checksum(by_version[version]))
            log.info("migration %s: applied before checksums, recorded the checksum of its file now", version)
        for version, sql in files:
            if version in recorded:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO public.billing_schema_migrations (version, checksum) VALUES ($1, $2)",
                    version, checksum(sql))
            applied_now.append(version)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
        finally:
            await conn.close()
    return applied_now
