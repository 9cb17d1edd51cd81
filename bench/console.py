"""`python -m bench.console`: how long the operator console's pages take with 10k runs and 1M audit
rows (docs/PERFORMANCE.md).

Starts its own embedded Postgres and Temporal dev server (bench/reconcile/stack.py), bulk-seeds
the tables the pages read (runs every 5 minutes as the usage-sync tick makes them, so 10k runs
span 35 days; one big run's discrepancies; audit rows spread over a year),
ANALYZEs, then serves the real app in-process (httpx over ASGI, lifespan included), signs in
and requests every page `--repeat` times. One JSON line: per page the median, p95 and max in
milliseconds, whether p95 < 300 ms, and the plans of the console's list queries (any sequential
scan of a big table is named in `seq_scans`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import httpx

from bench.reconcile.stack import Stack

BUDGET_MS = 300.0
ACTIONS = ["usage.push_meter_event", "usage.set_counter", "credits.grant", "subscription.resync", "invoice.resync",
           "customer.resync", "autoheal.pause", "autoheal.resume", "run.approve", "credits.adjust"]


async def seed(dsn: str, runs: int, audit_rows: int, discrepancies: int) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await conn.execute(
            """
            INSERT INTO billing.reconciliation_runs (run_id, workflow_run_id, kind, mode, window_start, window_end,
                                                     status, started_at, finished_at, counts)
            SELECT 'bench-run-' || g, md5('run' || g)::uuid::text,
                   CASE WHEN g % 10 = 0 THEN 'revenue' ELSE 'usage' END,
                   (ARRAY['dry-run', 'apply', 'plan'])[1 + g % 3],
                   current_date - 1, current_date,
                   (ARRAY['completed', 'completed', 'completed', 'failed', 'rejected', 'awaiting_approval'])[1 + g % 6],
                   now() - make_interval(mins => 5 * ($1 - g)), now() - make_interval(mins => 5 * ($1 - g)) + interval '2 min',
                   '{"drift_count": 3, "dedupe_count": 1}'
              FROM generate_series(1, $1) g
            """, runs)
        big = f"bench-run-{runs - 1}"  # a recent usage run with every discrepancy
        await conn.execute(
            """
            INSERT INTO billing.discrepancies (run_id, discrepancy_key, kind, customer_id, meter, usage_day,
                                               ledger_value, stripe_value, diff, status, action)
            SELECT $1, 'k|' || lpad(g::text, 8, '0'), (ARRAY['under_reported', 'over_reported', 'counter_drift'])[1 + g % 3],
                   'cus-' || (g % 5000), 'api_requests', current_date - (g % 30), g, g - 1, 1,
                   (ARRAY['applied', 'observed', 'pending', 'failed'])[1 + g % 4], 'push_delta'
              FROM generate_series(1, $2) g
            """, big, discrepancies)
        await conn.execute(
            """
            INSERT INTO billing.audit_log (at, actor, action, entity_type, entity_id, customer_id, before, after,
                                           reason, workflow_id, run_id)
            SELECT now() - make_interval(secs => ($1 - g) * 31.5), 'actor-' || (g % 50), ($2::text[])[1 + g % 10],
                   'customer', 'cus-' || (g % 10000), 'cus-' || (g % 10000), '{"value": 1}', '{"value": 2}',
                   'bench', 'bench-run-' || (g % $3), md5(g::text)::uuid::text
              FROM generate_series(1, $1) g
            """, audit_rows, ACTIONS, runs)
        # A rare actor (three rows a year apart): the filter must not walk the whole log.
        await conn.execute(
            """
            INSERT INTO billing.audit_log (at, actor, action, entity_type, entity_id, reason)
            SELECT now() - make_interval(days => g * 150), 'rare-actor', 'credits.adjust', 'customer', 'cus-1', 'bench'
              FROM generate_series(0, 2) g
            """)
        await conn.execute("ANALYZE")
        return {"seed_seconds": round(time.monotonic() - started, 1), "big_run": big}
    finally:
        await conn.close()


async def explain(dsn: str, big_run: str) -> dict[str, list[str]]:
    """The top plan nodes of the console's list queries, as the pages call them."""
    import asyncpg

    from console import queries

    plans: dict[str, list[str]] = {}
    calls = {
        "runs": lambda c: queries.runs(c, kind=None, mode=None, status=None, open_only=False),
        "runs_failed": lambda c: queries.runs(c, kind=None, mode=None, status="failed", open_only=False),
        "runs_page_100": lambda c: queries.runs(c, kind=None, mode=None, status=None, open_only=False, offset=5000),
        "run_discrepancies": lambda c: queries.discrepancies(c, big_run, kind="over_reported", status=None, after=None,
                                                             limit=51, offset=0),
        "audit": lambda c: queries.audit(c, customer=None, actor=None, action=None, since=None, until=None, before=None),
        "audit_actor": lambda c: queries.audit(c, customer=None, actor="actor-7", action=None, since=None, until=None,
                                               before=None),
        "audit_rare_actor": lambda c: queries.audit(c, customer=None, actor="rare-actor", action=None, since=None,
                                                    until=None, before=None),
        "audit_action": lambda c: queries.audit(c, customer=None, actor=None, action="run.approve", since=None,
                                                until=None, before=None),
        "audit_customer": lambda c: queries.audit(c, customer="cus-42", actor=None, action=None, since=None,
                                                  until=None, before=None),
    }
    conn = await asyncpg.connect(dsn)
    try:
        for name, call in calls.items():
            recorder = _Recorder()
            await call(recorder)
            sql, args = recorder.calls[0]
            rows = await conn.fetch("EXPLAIN " + sql, *args)
            plans[name] = [r[0].strip() for r in rows if "Scan" in r[0] or "Limit" in r[0]][:4]
    finally:
        await conn.close()
    return plans


class _Recorder:
    """Stands in for a connection: keeps the SQL a query function would run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.calls.append((sql, args))
        return []


async def measure(app: Any, big_ref: str, repeat: int) -> dict[str, dict[str, float]]:
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                    base_url="http://console.local") as web:
        page = await web.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        await web.post("/login", data={"csrf_token": token, "token": "bench-approver-token-0123456789"})
        csrf = (await web.get("/runs")).text.split('name="csrf_token" value="')[1].split('"')[0]
        pages: dict[str, tuple[str, str, dict[str, str] | None]] = {
            "overview": ("GET", "/", None),
            "runs": ("GET", "/runs", None),
            "runs ?status=failed": ("GET", "/runs?status=failed", None),
            "runs page 100": ("GET", "/runs?page=100", None),
            "run (the big one)": ("GET", f"/runs/{big_ref}", None),
            "run ?kind=over_reported": ("GET", f"/runs/{big_ref}?kind=over_reported", None),
            "audit": ("GET", "/audit", None),
            "audit by actor": ("POST", "/audit", {"actor": "actor-7"}),
            "audit by a rare actor": ("POST", "/audit", {"actor": "rare-actor"}),
            "audit by action": ("POST", "/audit", {"action": "run.approve"}),
            "audit by customer": ("POST", "/audit", {"customer": "cus-42"}),
            "audit by time": ("POST", "/audit", {"since": "30d", "until": "29d"}),
            "revenue": ("GET", "/revenue", None),
            "runs search (Temporal)": ("GET", "/runs/search?kind=reconcile-usage", None),
            "incident report (7 days)": ("GET", "/incidents", None),
        }
        # The incident report assembles a whole window in Python: a report, not a list page.
        slow = {"incident report (7 days)"}
        out: dict[str, dict[str, float]] = {}
        for name, (method, path, form) in pages.items():
            times = []
            print(f"  {name}", file=sys.stderr, flush=True)
            for _ in range(min(repeat, 3) if name in slow else repeat):
                t = time.perf_counter()
                r = await (web.get(path) if method == "GET" else web.post(path, data={"csrf_token": csrf, **(form or {})}))
                times.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
            times.sort()
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            out[name] = {"median_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1),
                         "max_ms": round(times[-1], 1), "under_budget": p95 < BUDGET_MS}
            print(f"    {out[name]}", file=sys.stderr, flush=True)
        return out


async def main(args: argparse.Namespace) -> None:
    stack = Stack()
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "TEMPORAL_ADDRESS")}
    try:
        print("starting Postgres and the Temporal dev server", file=sys.stderr)
        await stack.start()
        os.environ.update({"DATABASE_URL": stack.dsn, "TEMPORAL_ADDRESS": stack.temporal_address})
        print(f"seeding {args.runs} runs, {args.audit_rows} audit rows, {args.discrepancies} discrepancies",
              file=sys.stderr)
        seeded = await seed(stack.dsn, args.runs, args.audit_rows, args.discrepancies)
        from pydantic import SecretStr

        from common.client import connect
        from console.app import create_app
        from console.settings import ConsoleSettings

        settings = ConsoleSettings(tokens=SecretStr("bench:approver:bench-approver-token-0123456789"))
        from common.ui_setup import register_search_attributes

        client = await connect(stack.temporal_address)
        await register_search_attributes(client)  # as `dev up` does: /runs/search filters by them
        app = create_app(settings, stack.dsn, client=client)
        import asyncpg

        conn = await asyncpg.connect(stack.dsn)
        big_ref = await conn.fetchval("SELECT workflow_run_id FROM billing.reconciliation_runs WHERE run_id = $1",
                                      seeded["big_run"])
        await conn.close()
        print("measuring", file=sys.stderr)
        pages = await measure(app, big_ref, args.repeat)
        plans = await explain(stack.dsn, seeded["big_run"])
        seq = sorted(name for name, plan in plans.items() if any("Seq Scan" in line for line in plan))
        print(json.dumps({"runs": args.runs, "audit_rows": args.audit_rows, "discrepancies": args.discrepancies,
                          "seed_seconds": seeded["seed_seconds"], "repeat": args.repeat, "budget_ms": BUDGET_MS,
                          "all_under_budget": all(p["under_budget"] for p in pages.values()), "pages": pages,
                          "seq_scans": seq, "plans": plans}))
    finally:
        await stack.stop()
        for key, value in saved.items():  # the app read them; leave the caller's environment as it was
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from billing.settings import get_settings

        get_settings.cache_clear()  # read from the environment above


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--audit-rows", type=int, default=1_000_000)
    p.add_argument("--discrepancies", type=int, default=20_000, help="in the one big run")
    p.add_argument("--repeat", type=int, default=20, help="requests per page")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
