"""The final state of a run, normalized so that two runs compare (Stripe ids differ between runs:
everything is keyed by our customer ids), and the exactly-once checks against the emulator's
own record (`/_emulator/meter_events`) and Stripe's objects."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import stripe

from stripe_emulator.admin import EmulatorAdmin

from .scenario import Activity


def _d(v: Any) -> str:
    return str(Decimal(str(v)).normalize())


async def capture(pool: asyncpg.Pool, admin: EmulatorAdmin) -> dict[str, Any]:
    by_sid = {r["stripe_customer_id"]: r["customer_id"]
              for r in await pool.fetch("SELECT customer_id, stripe_customer_id FROM billing.customers")}
    st: dict[str, Any] = {}
    st["customers"] = sorted(
        (r["customer_id"], r["email"], r["name"], r["deleted_at"] is not None)
        for r in await pool.fetch("SELECT * FROM billing.customers"))
    st["usage_counters"] = sorted(
        (r["customer_id"], r["meter"], str(r["period_start"]), _d(r["value"]))
        for r in await pool.fetch("SELECT * FROM billing.usage_counters"))
    # sent and confirmed only differ by when the run looked; both mean "landed".
    st["outbox"] = sorted(
        (r["customer_id"], r["meter"], str(r["usage_day"]), r["kind"], _d(r["value"]),
         "landed" if r["status"] in ("sent", "confirmed") else r["status"])
        for r in await pool.fetch("SELECT * FROM billing.stripe_usage_pushes"))
    st["subscriptions"] = sorted(
        (r["customer_id"], r["status"], r["cancel_at_period_end"], r["canceled_at"] is not None,
         r["ended_at"] is not None, tuple(sorted(int(i.get("quantity") or 0) for i in r["items"])))
        for r in await pool.fetch("SELECT * FROM billing.subscriptions"))
    st["invoices"] = sorted(
        (by_sid.get(r["stripe_customer_id"], "?"), r["status"], r["amount_due"], r["amount_paid"],
         r["attempt_count"])
        for r in await pool.fetch("SELECT * FROM billing.invoices"))
    st["credit_ledger"] = sorted(
        (r["customer_id"], r["amount"], r["source"].split(":")[0])
        for r in await pool.fetch("SELECT * FROM billing.credit_ledger"))
    st["credit_balances"] = sorted(
        (r["customer_id"], r["balance"]) for r in await pool.fetch("SELECT * FROM billing.credit_balances"))
    st["stripe_events"] = sorted(Counter(
        (r["type"], r["status"]) for r in await pool.fetch("SELECT type, status FROM billing.stripe_events")).items())
    # Corrective writes are audited exactly once: a duplicate would show here.
    st["audit_log"] = sorted(Counter(
        r["action"] for r in await pool.fetch(
            "SELECT action FROM billing.audit_log WHERE action NOT IN ('run.pause', 'run.resume')")
    ).items())
    events = await admin.meter_events()
    st["stripe_meter_events"] = sorted(
        (by_sid.get(e["payload"]["stripe_customer_id"], "?"), e["event_name"],
         str(datetime.fromtimestamp(e["timestamp"], tz=UTC).date()), _d(e["payload"]["value"]),
         bool(e["cancelled"]), e["identifier"].startswith("other-system"))
        for e in events)
    return st


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per section: how many entries only one side has (empty = equal)."""
    out = {}
    for k in sorted(set(a) | set(b)):
        ca, cb = Counter(map(repr, a.get(k, []))), Counter(map(repr, b.get(k, [])))
        if ca != cb:
            out[k] = {"only_baseline": sum((ca - cb).values()), "only_chaos": sum((cb - ca).values())}
    return out


async def exactly_once(pool: asyncpg.Pool, admin: EmulatorAdmin) -> dict[str, Any]:
    """Duplicates and missing writes, from the emulator's record and the ledger."""
    events = await admin.meter_events()
    ids = Counter(e["identifier"] for e in events)
    dup_ids = {i: n for i, n in ids.items() if n > 1}
    by_sid = {r["stripe_customer_id"]: r["customer_id"]
              for r in await pool.fetch("SELECT customer_id, stripe_customer_id FROM billing.customers")}
    stripe_sum: dict[tuple, Decimal] = defaultdict(Decimal)
    for e in events:
        if e["cancelled"]:
            continue
        day = datetime.fromtimestamp(e["timestamp"], tz=UTC).date()
        key = (by_sid.get(e["payload"]["stripe_customer_id"], "?"), e["event_name"], day)
        stripe_sum[key] += Decimal(str(e["payload"]["value"]))
    ledger = {(r["customer_id"], r["meter"], r["day"]): r["v"] for r in await pool.fetch(
        """SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(quantity) AS v
             FROM billing.usage_events GROUP BY 1, 2, 3""")}
    keys = set(ledger) | set(stripe_sum)
    over = {k: (ledger.get(k, 0), stripe_sum.get(k, 0)) for k in keys if stripe_sum.get(k, 0) > ledger.get(k, 0)}
    under = {k: (ledger.get(k, 0), stripe_sum.get(k, 0)) for k in keys if stripe_sum.get(k, 0) < ledger.get(k, 0)}
    outbox = await pool.fetch("SELECT identifier, status FROM billing.stripe_usage_pushes")
    landed = {r["identifier"] for r in outbox if r["status"] in ("sent", "confirmed")}
    not_in_stripe = landed - set(ids)
    in_stripe_not_outbox = {i for i in ids if not i.startswith("other-system")} - {r["identifier"] for r in outbox}
    stuck = Counter(r["status"] for r in outbox if r["status"] in ("planned",))
    return {
        "meter_events_accepted": len(events),
        "outbox_rows": len(outbox),
        "keys_checked": len(keys),
        "duplicate_identifiers": len(dup_ids),
        "keys_over_reported": len(over),
        "keys_under_reported": len(under),
        "outbox_landed_missing_in_stripe": len(not_in_stripe),
        "stripe_events_without_outbox_row": len(in_stripe_not_outbox),
        "outbox_planned_left": sum(stuck.values()),
        "examples": {"over": [repr(x) for x in list(over.items())[:3]],
                     "under": [repr(x) for x in list(under.items())[:3]],
                     "dup": list(dup_ids)[:3]},
    }


async def webhook_tables_vs_stripe(pool: asyncpg.Pool, sc: stripe.StripeClient, act: Activity) -> dict[str, Any]:
    """Postgres's webhook-derived tables against Stripe's objects (same mapping as the tests)."""
    from tests.integration.webhook_helpers import Activity as HelperActivity
    from tests.integration.webhook_helpers import postgres_state, stripe_state

    h = HelperActivity(customers=act.customers, subscriptions=act.subscriptions,
                       credit_sessions=act.credit_sessions)
    want, have = await stripe_state(sc, h), await postgres_state(pool, h)
    mismatched = {}
    compared = 0
    for section in want:
        w, g = want[section], have[section]
        compared += len(w)
        bad = [k for k in set(w) | set(g) if w.get(k) != g.get(k)]
        if bad:
            mismatched[section] = len(bad)
    grants = await pool.fetch(
        "SELECT checkout_session_id, count(*) AS n FROM billing.credit_ledger "
        "WHERE checkout_session_id IS NOT NULL GROUP BY 1")
    double_grants = sum(1 for r in grants if r["n"] > 1)
    missing_grants = len(set(act.credit_sessions) - {r["checkout_session_id"] for r in grants})
    return {"objects_compared": compared, "mismatched": mismatched, "double_grants": double_grants,
            "missing_grants": missing_grants}
