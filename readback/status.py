"""Where the rolling read-back stands, from its tables (migration 0023): for `billing-recon
readback status` and the gauges (billing/metrics_collector.py)."""

from __future__ import annotations

from typing import Any

import asyncpg


async def read_status(conn: asyncpg.Connection, *, slices: int = 10, cycles: int = 5) -> dict[str, Any]:
    state = await conn.fetchrow("SELECT * FROM billing.readback_state")
    customers = await conn.fetchval("SELECT count(*) FROM billing.customers")
    out: dict[str, Any] = {"customers": customers, "cycle": None, "slices": [], "cycles": []}
    if state is not None:
        covered = await conn.fetchval(
            "SELECT coalesce(sum(customers), 0) FROM billing.readback_slices WHERE cycle = $1", state["cycle"])
        this_cycle = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE NOT on_pace) AS behind, count(*) FILTER (WHERE status = 'failed') AS failed, "
            "count(*) FILTER (WHERE status = 'awaiting_approval') AS awaiting "
            "FROM billing.readback_slices WHERE cycle = $1", state["cycle"])
        out["cycle"] = {
            "cycle": state["cycle"], "started_at": state["cycle_started_at"].isoformat(),
            "slices": state["slices"], "customers_claimed": covered, "last_slice_claimed": state["to_end"],
            "slices_behind_pace": this_cycle["behind"], "slices_failed": this_cycle["failed"],
            "slices_awaiting_approval": this_cycle["awaiting"],
            "latest_on_pace": await conn.fetchval(
                "SELECT on_pace FROM billing.readback_slices ORDER BY claimed_at DESC LIMIT 1")}
    out["slices"] = [
        {"cycle": r["cycle"], "slice": r["slice"], "after": r["after_customer"], "through": r["through_customer"],
         "customers": r["customers"], "meters": r["meters"], "on_pace": r["on_pace"], "status": r["status"],
         "run_id": r["child_run_id"], "run_status": r["run_status"], "claimed_at": r["claimed_at"].isoformat(),
         "error": r["error"]}
        for r in await conn.fetch(
            # The run's own status too: a slice left `running` or `awaiting_approval` goes on.
            "SELECT s.*, r.status AS run_status FROM billing.readback_slices s "
            "LEFT JOIN billing.reconciliation_runs r ON r.run_id = s.child_run_id "
            "ORDER BY s.cycle DESC, s.slice DESC LIMIT $1", slices)]
    out["cycles"] = [
        {"cycle": r["cycle"], "started_at": r["started_at"].isoformat(), "finished_at": r["finished_at"].isoformat(),
         "hours": round((r["finished_at"] - r["started_at"]).total_seconds() / 3600, 2), "slices": r["slices"],
         "customers": r["customers"], "failed_slices": r["failed_slices"]}
        for r in await conn.fetch("SELECT * FROM billing.readback_cycles ORDER BY cycle DESC LIMIT $1", cycles)]
    return out
