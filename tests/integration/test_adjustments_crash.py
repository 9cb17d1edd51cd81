"""A worker killed (SIGKILL, a real process) while it applies approved invoice adjustments: the
new worker finishes the plan and Stripe ends up with exactly one invoice item per closed
period, whatever attempt created it (outbox + deterministic Idempotency-Key)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from common.types import Mode, RunStatus
from reconcile.types import ApprovalDecision, Phase, ReconcileUsageInput

from .period_helpers import meter_and_prices, midnight, mirror, report_directly, subscribe, use
from .recon_helpers import start, wait_phase
from .worker_helpers import spawn_worker, stop_worker

pytestmark = pytest.mark.integration
N_CUSTOMERS = 24
RATE_LIMIT = 4  # Stripe calls/s of the worker: the adjustments take several seconds


async def test_worker_killed_mid_adjustments_creates_each_invoice_item_once(
        clean_db, stripe_client, emulator, emulator_admin, temporal_env, task_queue, postgres_dsn, tmp_path):
    today = datetime.now(UTC).date()
    await emulator_admin.reset(reset_config=True, clock_offset_seconds=-3 * 86400)
    _, prices = await meter_and_prices(stripe_client)
    customers = [await subscribe(clean_db, stripe_client, f"crash{i}", prices["per_unit"],
                                 midnight(today - timedelta(days=1))) for i in range(N_CUSTOMERS)]
    for c in customers:
        await report_directly(stripe_client, c, 100)
    await emulator_admin.advance_clock(3 * 86400)  # the period's invoices are final and paid
    for c in customers:
        await use(clean_db, c, today - timedelta(days=2), 150)  # 50 units never billed
        await mirror(clean_db, stripe_client, c)
    env = {**os.environ, "DATABASE_URL": postgres_dsn, "STRIPE_API_BASE": emulator,
           "TEMPORAL_ADDRESS": temporal_env.address, "TEMPORAL_NAMESPACE": temporal_env.namespace,
           "BILLING_TASK_QUEUE": task_queue, "STRIPE_RATE_LIMIT": str(RATE_LIMIT),
           "RECON_SETTLE_SECONDS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "worker.log"
    first = spawn_worker(env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        handle = await start(temporal_env.client, task_queue, ReconcileUsageInput(
            start_date=today - timedelta(days=2), end_date=today, customers=[c.customer_id for c in customers],
            settle_seconds=1, actor="pytest", mode=Mode.PLAN), "adjust-crash")
        await wait_phase(handle, Phase.AWAITING_APPROVAL, limit=60)
        await handle.execute_update("approve", ApprovalDecision(actor="finance@example.com", reason="pytest"))
        deadline = time.monotonic() + 40
        while (await emulator_admin.request_stats()).get("POST /v1/invoiceitems", 0) < 3:
            assert first.poll() is None, f"worker exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no invoice item arrived:\n{log.read_text()[-3000:]}"
            await asyncio.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = (await emulator_admin.request_stats()).get("POST /v1/invoiceitems", 0)
        assert 0 < at_kill < N_CUSTOMERS, f"the kill did not land mid-apply ({at_kill}/{N_CUSTOMERS})"
        second = spawn_worker(env, log)
        result = await asyncio.wait_for(handle.result(), 90)
    finally:
        for p in (first, second):
            if p is not None:
                stop_worker(p)

    assert result.status == RunStatus.COMPLETED, result
    per_customer = Counter()
    for c in customers:
        items = (await stripe_client.v1.invoice_items.list_async(params={"customer": c.stripe_customer_id})).data
        per_customer[c.customer_id] = len(items)
        assert [i.amount for i in items] == [100]  # 50 x 2 cents
    assert set(per_customer.values()) == {1}, per_customer
    outbox = await clean_db.fetch("SELECT status, count(*) AS n FROM billing.invoice_adjustments GROUP BY status")
    assert {r["status"]: r["n"] for r in outbox} == {"sent": N_CUSTOMERS}
    assert await clean_db.fetchval(
        "SELECT count(*) FROM billing.audit_log WHERE action = 'usage.invoice_adjustment'") == N_CUSTOMERS
