"""What every resync of a Stripe mirror table shares (ResyncSubscriptions: billing.subscriptions,
ResyncInvoices: billing.invoices): page through Stripe's listing, compare each object with its
local row through the webhook handler's own mapping, and fix it in apply mode, audited.

A fix is one transaction: the object's advisory lock (the webhook handler takes the same one),
the local row `FOR UPDATE`, the write and one audit row with the changed fields before and after.
A local row written after the page was listed (`synced_at` later than the listing: a webhook
re-read Stripe meanwhile) is fresher than the page and is left alone, so a resync never takes the
mirror back in time."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from billing.stripe_objects import StripeObjectError
from common.audit import AuditAction, write_audit
from common.heartbeat import heartbeat_pages
from common.paged import PagedRunContext, run_write_key, sample
from common.paged_activities import mark_seen, may_write
from resync.types import MirrorCounts, ResyncFindings
from webhooks.handlers import PermanentEventError, lock_object, read_time

log = logging.getLogger("billing.resync")

@dataclass(frozen=True)
class MirrorSpec:
    kind: str  # the object: the run_seen kind and the audit rows' entity type
    table: str  # its mirror table
    key: str  # the Stripe id column (and the row's attribute)
    fields: tuple[str, ...]  # compared, in a stable order (also the audit's before/after)
    to_row: Callable[[dict[str, Any]], Any]  # the webhook handler's mapping
    create_action: AuditAction
    update_action: AuditAction
    audit_kind: str  # first part of the audit idempotency key


# Writes Stripe's copy (the caller holds the lock, the row is locked); returns the customer id
# the audit row names.
WriteRow = Callable[[asyncpg.Connection, asyncpg.Record | None, Any, dict[str, Any], datetime],
                    Awaitable[str | None]]


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def local_compared(rec: asyncpg.Record, fields: tuple[str, ...]) -> dict[str, Any]:
    """A local row in the shape of the mapping's `compared()`."""
    return {f: _iso(rec[f]) if isinstance(rec[f], datetime) else rec[f] for f in fields}


def differing_fields(stripe: dict[str, Any], local: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if stripe.get(f) != local.get(f)]


async def compare_listing(
    pool: asyncpg.Pool, cp: Any, list_page: Callable[[str | None], Awaitable[tuple[list[dict], bool]]],
    compare: Callable[[list[dict[str, Any]], datetime], Awaitable[None]], max_pages: int,
) -> bool:
    """Up to `max_pages` pages of a Stripe listing from the checkpoint's cursor (`cp`: a pydantic
    checkpoint with `starting_after` and `pages`), each compared (and fixed) by
    `compare(objects, listed_at)`; heartbeats the checkpoint after every page. True when the
    listing is exhausted."""

    async def one_page() -> bool:
        async with pool.acquire() as conn:
            # Postgres' clock: a local row synced after this moment is fresher than the page.
            listed_at = await read_time(conn)
        objects, has_more = await list_page(cp.starting_after)
        if objects:
            await compare(objects, listed_at)
            cp.starting_after = objects[-1]["id"]
        cp.pages += 1
        return has_more and bool(objects)

    return await heartbeat_pages(cp, one_page, max_pages=max_pages - cp.pages)


def mirror_rows(spec: MirrorSpec, objects: list[dict[str, Any]]) -> list[Any]:
    try:
        return [spec.to_row(o) for o in objects]
    except StripeObjectError as e:
        raise ApplicationError(f"Stripe returned an unmappable {spec.kind}: {e}",
                               type=f"Invalid{spec.kind.capitalize()}", non_retryable=True) from e


class PageState(Protocol):
    counts: Any
    findings: Any
    paused: bool


async def compare_page(
    pool: asyncpg.Pool, ctx: PagedRunContext, spec: MirrorSpec, objects: list[dict[str, Any]],
    rows: list[Any], listed_at: datetime, cp: PageState, write_row: WriteRow,
) -> None:
    """Compare one page of Stripe's objects with their local rows; fix them in apply mode (one
    transaction and one audit row per fix). Every listed id is recorded in `run_seen`."""
    ids = [getattr(r, spec.key) for r in rows]
    c: MirrorCounts = cp.counts
    f: ResyncFindings = cp.findings
    async with pool.acquire() as conn:
        await mark_seen(conn, ctx.run_id, spec.kind, ids)
        local = {r[spec.key]: r for r in await conn.fetch(
            f"SELECT * FROM {spec.table} WHERE {spec.key} = ANY($1)", ids)}
        write, paused = await may_write(conn, ctx)
        cp.paused = cp.paused or paused
        for raw, row in zip(objects, rows, strict=True):
            oid = getattr(row, spec.key)
            have = local.get(oid)
            if have is None:
                c.missing_local += 1
                sample(f.missing_local, oid)
                if write and await fix_row(conn, ctx, spec, raw, row, listed_at, c, write_row):
                    c.created += 1
                continue
            c.compared += 1
            diff = differing_fields(row.compared(), local_compared(have, spec.fields), spec.fields)
            if not diff:
                c.matched += 1
                continue
            c.mismatched += 1
            for name in diff:
                c.fields[name] = c.fields.get(name, 0) + 1
            sample(f.mismatched, f"{oid}: {', '.join(diff)}")
            if write and await fix_row(conn, ctx, spec, raw, row, listed_at, c, write_row):
                c.fixed += 1


async def fix_row(
    conn: asyncpg.Connection, ctx: PagedRunContext, spec: MirrorSpec, raw: dict[str, Any], row: Any,
    listed_at: datetime, c: MirrorCounts, write_row: WriteRow,
) -> bool:
    """Write Stripe's copy and audit it, unless a webhook wrote a fresher copy since the page was
    listed or nothing differs any more. True when a row was written."""
    oid = getattr(row, spec.key)
    try:
        async with conn.transaction():
            await lock_object(conn, oid)
            cur = await conn.fetchrow(f"SELECT * FROM {spec.table} WHERE {spec.key} = $1 FOR UPDATE", oid)
            if cur is not None and cur["synced_at"] is not None and cur["synced_at"] > listed_at:
                return False
            before = local_compared(cur, spec.fields) if cur is not None else None
            after = row.compared()
            changed = differing_fields(after, before, spec.fields) if before is not None else list(after)
            if not changed:
                return False
            customer_id = await write_row(conn, cur, row, raw, listed_at)
            await write_audit(conn, ctx.audit_entry(
                spec.create_action if before is None else spec.update_action,
                entity_type=spec.kind, entity_id=oid,
                before={k: before[k] for k in changed} if before is not None else None,
                after={k: after[k] for k in changed},
                idempotency_key=run_write_key(ctx, spec.audit_kind, oid), customer_id=customer_id))
            return True
    except PermanentEventError as e:  # e.g. a customer-id conflict: report, go on
        log.warning("%s %s not fixed: %s", spec.kind, oid, e)
        c.fix_failures += 1
        return False


def page_result(model: type[BaseModel], cp: Any, done: bool) -> Any:
    """A page activity's result from its checkpoint."""
    return model(next_cursor=None if done else cp.starting_after, pages=cp.pages, counts=cp.counts,
                 findings=cp.findings, paused=cp.paused)
