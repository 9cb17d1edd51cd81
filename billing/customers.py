"""The customer mapping contract for applications: our customer id <-> the Stripe customer id,
written only through `billing.link_customer(customer_id, stripe_customer_id)` (migration
0012_link_customer). Idempotent, keyed on the Stripe customer id; it re-keys the row the webhook
receiver created for a Stripe customer it heard of first (customer_id = the Stripe id, when the
Stripe customer has no `metadata.customer_id`) to the application's id, moving every row that
names it, in one transaction that serializes with the webhook handlers. A mapping to another id,
either way, is refused (`CustomerLinkConflict`).

Plain SQL, for apps that write directly:

    SELECT billing.link_customer('acme', 'cus_...');   -- or ('acme', NULL) before a Stripe customer exists
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg


class LinkOutcome(StrEnum):
    UNCHANGED = "unchanged"  # already so
    CREATED = "created"  # a new row
    LINKED = "linked"  # the application's row, without a Stripe customer until now, has this one
    REKEYED = "rekeyed"  # the receiver's placeholder now has the application's id (audited customer.link)


class CustomerLinkConflict(ValueError):
    """The Stripe customer is mapped to another customer id, or the customer id to another
    Stripe customer: nothing was written."""


async def link_customer(conn: asyncpg.Connection | asyncpg.Pool, customer_id: str,
                        stripe_customer_id: str | None) -> LinkOutcome:
    try:
        return LinkOutcome(await conn.fetchval("SELECT billing.link_customer($1, $2)", customer_id,
                                                stripe_customer_id))
    except asyncpg.UniqueViolationError as e:
        raise CustomerLinkConflict(str(e)) from e


async def find_customer(conn: asyncpg.Connection | asyncpg.Pool, ref: str) -> asyncpg.Record | None:
    """The customer row `ref` names: our customer id first, else its Stripe customer id (a
    receiver's placeholder row has the Stripe id as both)."""
    return await conn.fetchrow(
        """
        SELECT customer_id, stripe_customer_id, email, name, deleted_at FROM billing.customers
         WHERE customer_id = $1 OR stripe_customer_id = $1
         ORDER BY (customer_id = $1) DESC LIMIT 1
        """, ref)
