"""Backfill bookkeeping (Postgres): which day runs already completed, durably beyond Temporal's
retention, so a re-run of the same range starts nothing twice."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from backfill.types import CompletedRunsInput, CompletedRunsResult


class BackfillActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @activity.defn(name="ops.completed_runs")
    async def completed_runs(self, inp: CompletedRunsInput) -> CompletedRunsResult:
        rows = await self.pool.fetch(
            "SELECT run_id FROM billing.reconciliation_runs WHERE run_id = ANY($1) AND status = 'completed' "
            "AND NOT observe_only",
            inp.run_ids)
        return CompletedRunsResult(completed=sorted(r["run_id"] for r in rows))
