"""Postgres access: connection pools and the migration runner (plain SQL files, in order)."""

from __future__ import annotations

import json
from importlib import resources

import asyncpg

from billing.telemetry import instrument_connection

MIGRATIONS_PACKAGE = "billing.migrations"
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


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration, sorted by file name."""
    folder = resources.files(MIGRATIONS_PACKAGE.replace(".migrations", "")).joinpath("migrations")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return the versions
    applied now. Safe to run any number of times, also concurrently."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS public.billing_schema_migrations (
                version    text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM public.billing_schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO public.billing_schema_migrations (version) VALUES ($1)", version
                )
            applied_now.append(version)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
        finally:
            await conn.close()
    return applied_now
