"""Fixtures the integration tests share (the session's servers are in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def cli_env(postgres_dsn, emulator, temporal_env, task_queue) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
            "TEMPORAL_ADDRESS": temporal_env.address, "BILLING_TASK_QUEUE": task_queue,
            "COLUMNS": "200"}


@pytest.fixture
async def db(clean_db):
    await clean_db.execute(
        "INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES ('acme', 'cus_a'), ('globex', 'cus_g')")
    return clean_db
