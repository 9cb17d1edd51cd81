"""Migration checksums against a real Postgres: each applied migration's sha256 is recorded, an
applied migration whose file was edited is refused before anything runs (CLI: one line, exit 1),
and a database migrated before checksums existed keeps working (its checksums are recorded on
the first run after the upgrade)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from billing import db
from tests.integration.edge_helpers import private_database

pytestmark = pytest.mark.integration

OLD_TRACKING_TABLE = """
    CREATE TABLE public.billing_schema_migrations (
        version    text PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""


async def recorded(dsn: str) -> dict[str, str | None]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, checksum FROM public.billing_schema_migrations")
    finally:
        await conn.close()
    return {r["version"]: r["checksum"] for r in rows}


def write(folder: Path, name: str, sql: str) -> None:
    (folder / name).write_bytes(sql.encode())


async def test_an_edited_applied_migration_is_refused_before_anything_runs(postgres_dsn, tmp_path):
    write(tmp_path, "0001_first.sql", "CREATE TABLE public.edges_a (id int);\n")
    write(tmp_path, "0002_second.sql", "CREATE TABLE public.edges_b (id int);\n")
    async with private_database(postgres_dsn, prefix="mig") as dsn:
        assert await db.migrate(dsn, folder=tmp_path) == ["0001_first", "0002_second"]
        assert await recorded(dsn) == {v: db.checksum(sql) for v, sql in db.migration_files(tmp_path)}

        # The same text with CRLF line endings (a Windows checkout) is not an edit.
        write(tmp_path, "0001_first.sql", "CREATE TABLE public.edges_a (id int);\r\n")
        assert await db.migrate(dsn, folder=tmp_path) == []

        # Edited after it was applied, and a new migration beside it: refused, nothing applied.
        write(tmp_path, "0001_first.sql", "CREATE TABLE public.edges_a (id int, name text);\n")
        write(tmp_path, "0003_third.sql", "CREATE TABLE public.edges_c (id int);\n")
        with pytest.raises(db.MigrationError) as refused:
            await db.migrate(dsn, folder=tmp_path)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith("migration 0001_first.sql was edited after it was applied")
        assert "new migration" in message
        assert "0003_third" not in await recorded(dsn)

        # The rule in CONTRIBUTING.md: restore the file, put the change in a new migration.
        write(tmp_path, "0001_first.sql", "CREATE TABLE public.edges_a (id int);\n")
        write(tmp_path, "0003_third.sql", "ALTER TABLE public.edges_a ADD COLUMN name text;\n")
        assert await db.migrate(dsn, folder=tmp_path) == ["0003_third"]
        conn = await asyncpg.connect(dsn)
        try:
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'edges_a'")
        finally:
            await conn.close()
        assert {r["column_name"] for r in columns} == {"id", "name"}


async def test_a_database_migrated_before_checksums_keeps_working(postgres_dsn):
    """What the runner did before checksums: the old tracking table, every package migration
    applied. The upgrade applies nothing again and records each file's checksum once."""
    files = db.migration_files()
    async with private_database(postgres_dsn, prefix="mig") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(OLD_TRACKING_TABLE)
            for version, sql in files:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO public.billing_schema_migrations (version) VALUES ($1)", version)
        finally:
            await conn.close()

        assert await db.migrate(dsn) == []
        assert await recorded(dsn) == {v: db.checksum(sql) for v, sql in files}
        assert await db.migrate(dsn) == []


async def test_cli_migrate_names_the_edited_migration_in_one_line(postgres_dsn):
    """The package's own files against a database whose record of 0004 differs (as if the file
    changed after it was applied there): `billing-recon migrate` exits 1 with one line."""
    async with private_database(postgres_dsn, prefix="mig") as dsn:
        assert len(await db.migrate(dsn)) == len(db.migration_files())
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("UPDATE public.billing_schema_migrations SET checksum = repeat('0', 64) "
                               "WHERE version = '0004_autoheal'")
        finally:
            await conn.close()
        cli = str(Path(sys.executable).parent / "billing-recon")
        res = await asyncio.to_thread(subprocess.run, [cli, "migrate"], capture_output=True, text=True,
                                      timeout=120, env={**os.environ, "DATABASE_URL": dsn})
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith("error: migration 0004_autoheal.sql was edited after it was applied")
        assert "Traceback" not in res.stderr
