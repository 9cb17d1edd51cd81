"""One Stripe budget for every worker, kept in Postgres (migration 0020_stripe_budget).

Stripe limits the account (100 ops/s live, 25 in test mode) and each endpoint (25/s by default,
the meter event summaries included). A limiter per process cannot hold that across workers:
three workers at 20/s send 60/s. Here every Stripe request, SDK retries included, first reserves
a place in the first second of wall time where the account's bucket and its endpoint's both
have room, with one atomic call (`billing.stripe_budget_slot`), then sleeps until then. The rows hold the limits, so
`billing-recon budget set` changes them for every worker at once, and restarts lose nothing.
Why a token bucket in Postgres rather than Temporal's task-queue activity rate limit:
docs/stripe-budget.md."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from billing.budget_lane import BudgetLane
from common.audit import AuditAction, AuditInput, write_audit

ACCOUNT = "account"
# The settings row (migration 0020 inserts it; its column defaults if it was deleted).
_SETTINGS_ROW = "INSERT INTO billing.stripe_budget_settings (id) VALUES (true) ON CONFLICT DO NOTHING"


class StripeBudget:
    """Waits for the caller's slot in the shared budget (`await budget.slot("operation")`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.waited_seconds = 0.0  # total time this process's calls queued for their slots

    async def slot(self, endpoint: str, lane: BudgetLane | None = None) -> None:
        if lane is None:
            wait = await self._pool.fetchval("SELECT billing.stripe_budget_slot($1)", endpoint)
        else:
            wait = await self._pool.fetchval(
                "SELECT billing.stripe_budget_slot($1, $2, $3)", endpoint, lane.name, lane.share)
        if wait > 0:
            self.waited_seconds += wait
            await asyncio.sleep(wait)


@dataclass(frozen=True)
class Bucket:
    name: str
    limit: Decimal  # Stripe's limit, ops/s
    ours: Decimal  # what billing-recon may use: limit x (1 - reserved share)
    queued_seconds: float  # how far ahead its places are handed out (end of its last second used)
    taken: int
    updated_at: datetime
    updated_by: str | None
    own_bucket: bool = False  # limited by its own bucket only, not the account's (live meter events)


@dataclass(frozen=True)
class BudgetView:
    reserved_share: Decimal
    endpoint_default: Decimal
    buckets: list[Bucket]


async def read_budget(conn: asyncpg.Connection) -> BudgetView:
    await conn.execute(_SETTINGS_ROW)
    settings = await conn.fetchrow(
        "SELECT reserved_share, endpoint_default FROM billing.stripe_budget_settings")
    rows = await conn.fetch(
        """
        SELECT b.bucket, b.ops_per_second, b.taken, b.updated_at, b.updated_by, b.own_bucket,
               greatest(0, coalesce(max(u.second) + 1, 0) - extract(epoch FROM clock_timestamp()))::float8
                   AS queued
          FROM billing.stripe_budget b LEFT JOIN billing.stripe_budget_usage u ON u.bucket = b.bucket
         GROUP BY b.bucket ORDER BY b.bucket <> 'account', b.bucket
        """)
    share = settings["reserved_share"]
    return BudgetView(share, settings["endpoint_default"], [
        Bucket(r["bucket"], r["ops_per_second"], r["ops_per_second"] * (1 - share), r["queued"], r["taken"],
               r["updated_at"], r["updated_by"], r["own_bucket"]) for r in rows])


async def set_budget(
    conn: asyncpg.Connection, *, actor: str, reason: str, account: Decimal | None = None,
    endpoints: dict[str, Decimal] | None = None, reserved_share: Decimal | None = None,
    endpoint_default: Decimal | None = None, change_key: str, own_bucket: dict[str, bool] | None = None,
) -> BudgetView:
    """Changes the limits for every worker at once (their next slot uses them), audited as one
    `budget.set` row keyed by `change_key`. Values are validated by the caller and by the
    tables' CHECKs."""
    before = await read_budget(conn)
    async with conn.transaction():
        if reserved_share is not None or endpoint_default is not None:
            await conn.execute(
                """
                UPDATE billing.stripe_budget_settings
                   SET reserved_share = coalesce($1, reserved_share),
                       endpoint_default = coalesce($2, endpoint_default), updated_at = now(), updated_by = $3
                """, reserved_share, endpoint_default, actor)
        limits = {**({ACCOUNT: account} if account is not None else {}), **(endpoints or {})}
        for bucket, limit in limits.items():
            await conn.execute(
                """
                INSERT INTO billing.stripe_budget (bucket, ops_per_second, updated_by) VALUES ($1, $2, $3)
                ON CONFLICT (bucket) DO UPDATE
                   SET ops_per_second = excluded.ops_per_second, updated_at = now(), updated_by = $3
                """, bucket, limit, actor)
        for bucket, own in (own_bucket or {}).items():
            # A row for it first (the endpoint default), then its bucket choice.
            await conn.execute(
                """
                INSERT INTO billing.stripe_budget (bucket, ops_per_second, own_bucket, updated_by)
                SELECT $1, endpoint_default, $2, $3 FROM billing.stripe_budget_settings
                ON CONFLICT (bucket) DO UPDATE SET own_bucket = $2, updated_at = now(), updated_by = $3
                """, bucket, own, actor)
        after = await read_budget(conn)
        await write_audit(conn, AuditInput(
            actor=actor, action=AuditAction.BUDGET_SET, entity_type="stripe_budget", entity_id=ACCOUNT,
            reason=reason, idempotency_key=f"budget-set-{change_key}",
            before=_limits(before), after=_limits(after)))
    return after


def _limits(view: BudgetView) -> dict:
    return {"reserved_share": str(view.reserved_share), "endpoint_default": str(view.endpoint_default),
            "buckets": {b.name: str(b.limit) for b in view.buckets},
            "own_buckets": sorted(b.name for b in view.buckets if b.own_bucket)}
