"""The rolling read-back's bookkeeping: which slice of customers is due, and how it ended.

Pace: a cycle of `cycle_seconds` walks every customer in id order. At a slice started
`elapsed` seconds into the cycle, the customers covered by the end of the slice's interval
should be N x (elapsed + every) / cycle (N = customers now); the slice claims the difference,
so the reads spread evenly over the cycle and a skipped tick is caught up by the next. The
budget lane caps it: the lane reads floor(endpoint limit x share) summaries a second, one per
(customer, meter), and a slice may spend SLICE_BUDGET_FILL of its interval reading. A slice that
hits the cap is marked behind pace (`on_pace = false`, a metric and `readback status`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import asyncpg
from temporalio import activity

from billing.budget_lane import DEFAULT_ENDPOINT_LIMIT
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway
from readback.types import ClaimInput, FinishSliceInput, SliceClaim, SliceStatus

# A slice's reads take at most this share of its interval at the lane's rate: the rest is for
# apply-time re-reads and the run's own steps, so it ends before the next slice is due.
SLICE_BUDGET_FILL = 0.8
SUMMARIES = "meter_event_summaries"  # the gateway's operation (= its budget bucket)
# Customer ids compare in byte order (= Python's str order) whatever the database's collation,
# so a slice's bounds mean the same in the claim, in ReconcileUsage's pages and in reports.
BYTES = 'COLLATE "C"'
# Slices whose run outlived the read-back's wait and still runs: past this many, no new slice is
# claimed (a Stripe outage must not pile up a run every tick).
MAX_OPEN_SLICES = 3
OPEN_RUN = ["running", "applying", "verifying"]  # still reading or writing (not waiting for a person)
# A slice still `claimed` this long after its claim lost its read-back run (killed, timed out).
ABANDON_AFTER = "2 hours"
ABANDONED = "its read-back run ended without recording the slice (killed or timed out)"
_STATE_ROW = "INSERT INTO billing.readback_state (id) VALUES (true) ON CONFLICT DO NOTHING"


def slice_size(*, customers: int, done: int, elapsed: float, cycle: float, every: float,
               meters: int, lane_rate: int) -> tuple[int, bool]:
    """(customers to claim, on pace). Pure: tests/unit/test_readback.py."""
    target = math.ceil(customers * min(1.0, max(0.0, elapsed + every) / cycle))
    want = max(0, target - done)
    cap = max(1, math.floor(lane_rate * every * SLICE_BUDGET_FILL / max(1, meters)))
    return min(want, cap), want <= cap


def lane_rate(endpoint_limit: float, share: float) -> int:
    """Summary reads a second in the lane (as billing.stripe_budget_slot counts them)."""
    return max(1, math.floor(endpoint_limit * share))


class ReadBackActivities:
    def __init__(self, pool: asyncpg.Pool, stripe: StripeGateway, settings: Settings) -> None:
        self.pool = pool
        self.stripe = stripe
        self.settings = settings

    async def _sum_meters(self) -> int:
        return sum(1 for m in await self.stripe.list_meters() if m.status == "active" and m.formula == "sum")

    @activity.defn(name="readback.claim_slice")
    async def claim_slice(self, inp: ClaimInput) -> SliceClaim:
        try:
            return await self._claim(inp)
        except _Preview as preview:
            return preview.claim

    async def _claim(self, inp: ClaimInput) -> SliceClaim:
        meters = await self._sum_meters()  # before the transaction: a Stripe call holds no lock
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_STATE_ROW)
            state = await conn.fetchrow("SELECT * FROM billing.readback_state FOR UPDATE")
            claimed = await conn.fetchrow("SELECT * FROM billing.readback_slices WHERE claimed_by = $1",
                                          inp.claimed_by)
            if claimed is not None:  # this run's claim, retried
                return _claim_of(claimed, due=True)
            # Slices whose read-back run died before recording how they ended.
            await conn.execute(
                "UPDATE billing.readback_slices SET status = 'failed', finished_at = now(), error = $1 "
                f"WHERE status = 'claimed' AND claimed_at < now() - interval '{ABANDON_AFTER}'", ABANDONED)
            cycle, started, cursor, slices = state["cycle"], state["cycle_started_at"], state["cursor"], state["slices"]
            top = await conn.fetchval("SELECT coalesce(max(cycle), 0) FROM billing.readback_slices")
            # The cycle is over when its last slice was claimed, or when no customer is left after
            # the cursor (the last ones were deleted after it was claimed).
            over = state["to_end"] or (cursor is not None and not await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM billing.customers WHERE customer_id > $1 {BYTES})", cursor))
            if over:
                await _record_cycle(conn, cycle)
                cycle, started, cursor, slices = max(cycle, top) + 1, datetime.now(UTC), None, 0
            elif slices == 0:  # no slice yet (first run, or the state row was reset): it starts now
                cycle, started = max(cycle, top + 1), datetime.now(UTC)
            if over or state["slices"] == 0:
                await conn.execute(
                    "UPDATE billing.readback_state SET cycle = $1, cycle_started_at = $2, cursor = NULL, "
                    "slices = 0, to_end = false, updated_at = now()", cycle, started)
            customers = await conn.fetchval("SELECT count(*) FROM billing.customers")
            done = 0 if cursor is None else await conn.fetchval(
                f"SELECT count(*) FROM billing.customers WHERE customer_id <= $1 {BYTES}", cursor)
            open_runs = await conn.fetchval(
                "SELECT count(*) FROM billing.readback_slices s JOIN billing.reconciliation_runs r "
                "ON r.run_id = s.child_run_id WHERE s.status = 'running' AND r.status = ANY($1)", OPEN_RUN)
            if open_runs >= MAX_OPEN_SLICES:  # Stripe or the workers are slow: do not pile runs up
                return SliceClaim(due=False, cycle=cycle, cycle_customers=customers, cycle_done_customers=done,
                                  waiting_on_runs=open_runs)
            limit = None if self.settings.stripe_budget != "shared" else await conn.fetchval(
                "SELECT ops_per_second FROM billing.stripe_budget WHERE bucket = $1", SUMMARIES)
            rate = lane_rate(float(limit or DEFAULT_ENDPOINT_LIMIT), float(inp.budget_share))
            elapsed = (datetime.now(UTC) - started).total_seconds()
            n, on_pace = slice_size(customers=customers, done=done, elapsed=elapsed, cycle=inp.cycle_seconds,
                                    every=inp.every_seconds, meters=meters, lane_rate=rate)
            if n == 0 or customers == 0:
                return SliceClaim(due=False, cycle=cycle, cycle_customers=customers, cycle_done_customers=done)
            through = await conn.fetchval(
                f"SELECT customer_id FROM billing.customers WHERE ($1::text IS NULL OR customer_id > $1 {BYTES}) "
                f"ORDER BY customer_id {BYTES} OFFSET $2 LIMIT 1", cursor, n - 1)
            to_end = through is None or not await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM billing.customers WHERE customer_id > $1 {BYTES})", through)
            size = min(n, customers - done)
            if not inp.record:  # a dry-run's preview: the transaction's changes are rolled back
                raise _Preview(SliceClaim(
                    due=True, cycle=cycle, slice=slices + 1, after=cursor, through=None if to_end else through,
                    customers=size, meters=meters, on_pace=on_pace, child_id=f"{inp.claimed_by}-preview",
                    cycle_customers=customers, cycle_done_customers=done))
            slices += 1
            # The child's id names the cycle by its start too: unique even if the state row was reset.
            row = await conn.fetchrow(
                """
                INSERT INTO billing.readback_slices
                    (cycle, slice, after_customer, through_customer, customers, meters, claimed_by,
                     child_run_id, on_pace)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *
                """, cycle, slices, cursor, None if to_end else through, size, meters,
                inp.claimed_by, f"usage-readback-{started:%Y%m%dT%H%M%S}-c{cycle}-s{slices}", on_pace)
            await conn.execute(
                "UPDATE billing.readback_state SET cursor = $1, slices = $2, to_end = $3, updated_at = now()",
                None if to_end else through, slices, to_end)
            return _claim_of(row, due=True, cycle_customers=customers, done=done)

    @activity.defn(name="readback.run_status")
    async def run_status(self, run_id: str) -> str | None:
        """The slice's ReconcileUsage run status (billing.reconciliation_runs), None before it starts."""
        return await self.pool.fetchval("SELECT status FROM billing.reconciliation_runs WHERE run_id = $1", run_id)

    @activity.defn(name="readback.finish_slice")
    async def finish_slice(self, inp: FinishSliceInput) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                UPDATE billing.readback_slices
                   SET status = $3, error = $4, counts = $5, finished_at = now()
                 WHERE cycle = $1 AND slice = $2 AND status IN ('claimed', 'awaiting_approval')
                RETURNING through_customer
                """, inp.cycle, inp.slice, inp.status, inp.error,
                inp.counts.model_dump() if inp.counts else None)
            if row is not None and row["through_customer"] is None:
                await _record_cycle(conn, inp.cycle)  # the cycle's last slice


async def _record_cycle(conn: asyncpg.Connection, cycle: int) -> None:
    """A cycle is complete once its last slice was read (or it ran out of customers): its row in
    billing.readback_cycles, once. Runs its slices left going on (`running`, `awaiting_approval`)
    finish on their own; `readback status` shows their run's status."""
    await conn.execute(
        """
        INSERT INTO billing.readback_cycles (cycle, started_at, finished_at, slices, customers, failed_slices)
        SELECT $1, min(claimed_at), coalesce(max(finished_at), now()), count(*), sum(customers),
               count(*) FILTER (WHERE status = $2)
          FROM billing.readback_slices WHERE cycle = $1
        HAVING count(*) > 0
        ON CONFLICT (cycle) DO NOTHING
        """, cycle, SliceStatus.FAILED)


class _Preview(Exception):
    """Leaves the claim's transaction without a trace (a dry-run), carrying what it would claim."""

    def __init__(self, claim: SliceClaim) -> None:
        super().__init__("preview")
        self.claim = claim


def _claim_of(row: asyncpg.Record, *, due: bool, cycle_customers: int = 0, done: int = 0) -> SliceClaim:
    return SliceClaim(
        due=due, cycle=row["cycle"], slice=row["slice"], after=row["after_customer"], through=row["through_customer"],
        customers=row["customers"], meters=row["meters"], on_pace=row["on_pace"], child_id=row["child_run_id"],
        cycle_customers=cycle_customers, cycle_done_customers=done)
