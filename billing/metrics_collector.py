"""Gauges derived from Postgres, refreshed by every worker every `METRICS_REFRESH_SECONDS`.

The last success, the last run's drift, the webhook inbox backlog and paused runs are *state*,
and Postgres holds it: computed from `billing.reconciliation_runs`, `billing.discrepancies`,
`billing.stripe_events` and `billing.audit_log`, these figures survive worker restarts and are
the same on every worker (alert on `max()` across instances). A refresh is a handful of indexed
queries (see migration 0002_observability).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import asyncpg

from billing import metrics
from billing.settings import Settings
from checks import metrics as checks_metrics
from checks import store as checks_store
from common.audit import AuditAction
from common.types import RunStatus
from readback.status import read_status
from reconcile.types import Counts

log = logging.getLogger(__name__)

RUN_KINDS = ("usage",)  # every kind gets its gauges even before its first run
# A success is a completed run that could heal (dry-runs only observe).
HEALING_MODES = ["apply", "plan"]
OPEN_STATUSES = [s.value for s in (RunStatus.RUNNING, RunStatus.AWAITING_APPROVAL,
                                   RunStatus.APPLYING, RunStatus.VERIFYING)]
PAUSE_ACTIONS = [AuditAction.RUN_PAUSE.value, AuditAction.RUN_RESUME.value]

_LAST_SUCCESS_SQL = """
SELECT kind, extract(epoch FROM max(finished_at))::float8 AS ts
  FROM billing.reconciliation_runs
 WHERE status = 'completed' AND mode = ANY($1) AND finished_at IS NOT NULL AND NOT observe_only
 GROUP BY kind
"""

_LAST_RUNS_SQL = """
SELECT DISTINCT ON (kind) kind, run_id, counts, extract(epoch FROM finished_at)::float8 AS ts
  FROM billing.reconciliation_runs
 WHERE status = 'completed' AND finished_at IS NOT NULL
 ORDER BY kind, finished_at DESC
"""

# Scan findings only (verify|... rows re-check the same keys after the corrections).
_DIFFS_SQL = """
SELECT meter,
       coalesce(sum(abs(ledger_value - stripe_value)) FILTER (WHERE stripe_value IS NOT NULL), 0)::float8 AS stripe_abs,
       coalesce(sum(abs(diff)) FILTER (WHERE stripe_value IS NULL AND counter_value IS NOT NULL), 0)::float8 AS counter_abs,
       coalesce(max(abs(diff_pct)), 0)::float8 AS pct
  FROM billing.discrepancies
 WHERE run_id = $1 AND discrepancy_key NOT LIKE 'verify|%' AND kind <> 'pending'
 GROUP BY meter
"""

_OPEN_RUNS_SQL = """
SELECT kind, status, count(*) AS n FROM billing.reconciliation_runs
 WHERE finished_at IS NULL AND status = ANY($1) GROUP BY kind, status
"""

_BACKLOG_SQL = """
SELECT status, count(*) AS n,
       extract(epoch FROM now() - min(received_at))::float8 AS oldest
  FROM billing.stripe_events WHERE status IN ('received', 'failed') GROUP BY status
"""

# Pauses in force: the global switch (`billing-recon pause`, billing.autoheal_state) counts 1,
# plus every unfinished run whose latest pause/resume audit row is a pause.
_PAUSED_SQL = """
WITH runs AS (
    SELECT p.at
      FROM (SELECT DISTINCT ON (workflow_id) workflow_id, action, at
              FROM billing.audit_log
             WHERE action = ANY($1) AND workflow_id IS NOT NULL
             ORDER BY workflow_id, at DESC, id DESC) p
      JOIN billing.reconciliation_runs r ON r.run_id = p.workflow_id
     WHERE p.action = $2 AND r.finished_at IS NULL
), g AS (SELECT since FROM billing.autoheal_state WHERE paused)
SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM g) AS n,
       extract(epoch FROM least((SELECT min(at) FROM runs), (SELECT min(since) FROM g)))::float8 AS since
"""


# billing_stripe_circuit_state's encoding of billing.stripe_circuit.state.
CIRCUIT_STATE_VALUES = {"closed": 0.0, "open": 1.0, "half_open": 2.0}


class MetricsCollector:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        # Label sets set earlier: set back to 0 when they vanish (a meter gone from the last run).
        self._diff_labels: set[tuple[str, str, str]] = set()
        self._pct_labels: set[tuple[str, str]] = set()
        self._open_labels: set[tuple[str, str]] = set()

    async def refresh(self) -> None:
        async with self.pool.acquire() as conn:
            last_success = await conn.fetch(_LAST_SUCCESS_SQL, HEALING_MODES)
            last_runs = await conn.fetch(_LAST_RUNS_SQL)
            diffs = {r["kind"]: await conn.fetch(_DIFFS_SQL, r["run_id"]) for r in last_runs}
            open_runs = await conn.fetch(_OPEN_RUNS_SQL, OPEN_STATUSES)
            backlog = await conn.fetch(_BACKLOG_SQL)
            paused = await conn.fetchrow(_PAUSED_SQL, PAUSE_ACTIONS, AuditAction.RUN_PAUSE.value)
            daily_checks = await checks_store.last_results(conn)
            circuit = await conn.fetchval("SELECT state FROM billing.stripe_circuit")
            readback = await read_status(conn, slices=0, cycles=1)
        checks_metrics.publish(daily_checks)
        _publish_readback(readback)
        metrics.set_gauge(metrics.STRIPE_CIRCUIT_STATE, CIRCUIT_STATE_VALUES.get(circuit or "closed", 0.0))
        self._publish(last_success, last_runs, diffs, open_runs, backlog, paused)

    def _publish(self, last_success, last_runs, diffs, open_runs, backlog, paused) -> None:
        set_ = metrics.set_gauge
        set_(metrics.EPSILON, float(self.settings.recon_epsilon))
        success = {r["kind"]: r["ts"] for r in last_success}
        for kind in sorted(set(RUN_KINDS) | set(success)):
            # 0 = never: `time() - x` is then huge and BillingReconciliationMissing fires.
            set_(metrics.LAST_SUCCESS, success.get(kind) or 0.0, {"kind": kind})

        diff_seen: set[tuple[str, str, str]] = set()
        pct_seen: set[tuple[str, str]] = set()
        for r in last_runs:
            kind = r["kind"]
            counts: dict[str, Any] = r["counts"] or {}
            set_(metrics.LAST_RUN_FINISHED, r["ts"], {"kind": kind})
            for figure in Counts.model_fields:
                set_(metrics.LAST_RUN, float(counts.get(figure) or 0), {"kind": kind, "figure": figure})
            for d in diffs.get(kind, []):
                for against, value in (("stripe", d["stripe_abs"]), ("counter", d["counter_abs"])):
                    set_(metrics.DIFF_ABS, value, {"kind": kind, "meter": d["meter"], "against": against})
                    diff_seen.add((kind, d["meter"], against))
                set_(metrics.DIFF_PCT, d["pct"], {"kind": kind, "meter": d["meter"]})
                pct_seen.add((kind, d["meter"]))
        for kind, meter, against in self._diff_labels - diff_seen:
            set_(metrics.DIFF_ABS, 0.0, {"kind": kind, "meter": meter, "against": against})
        for kind, meter in self._pct_labels - pct_seen:
            set_(metrics.DIFF_PCT, 0.0, {"kind": kind, "meter": meter})
        self._diff_labels |= diff_seen
        self._pct_labels |= pct_seen

        open_now = {(r["kind"], r["status"]): r["n"] for r in open_runs}
        for kind in RUN_KINDS:
            for status in OPEN_STATUSES:
                open_now.setdefault((kind, status), 0)
        for kind, status in self._open_labels - set(open_now):
            set_(metrics.OPEN_RUNS, 0.0, {"kind": kind, "status": status})
        for (kind, status), n in open_now.items():
            set_(metrics.OPEN_RUNS, float(n), {"kind": kind, "status": status})
        self._open_labels |= set(open_now)

        by_status = {r["status"]: r for r in backlog}
        for status in ("received", "failed"):
            row = by_status.get(status)
            set_(metrics.WEBHOOK_BACKLOG, float(row["n"]) if row else 0.0, {"status": status})
        received = by_status.get("received")
        set_(metrics.WEBHOOK_BACKLOG_AGE, received["oldest"] if received else 0.0)

        set_(metrics.PAUSED, float(paused["n"]) if paused else 0.0)
        set_(metrics.PAUSED_SINCE, (paused["since"] or 0.0) if paused else 0.0)
        set_(metrics.COLLECTOR_REFRESH, time.time())

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until `stop` is set. A failed refresh is logged and retried next interval
        (the gauges keep their last values; `billing_metrics_collector_last_refresh_timestamp`
        shows the staleness)."""
        interval = max(0.2, self.settings.metrics_refresh_seconds)
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:
                log.exception("metrics refresh from Postgres failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass


def _publish_readback(view: dict[str, Any]) -> None:
    """The read-back's gauges (readback.status.read_status): 0 until its first slice / cycle."""
    cycle = view["cycle"]
    started = datetime.fromisoformat(cycle["started_at"]).timestamp() if cycle else 0.0
    metrics.set_gauge(metrics.READBACK_CYCLE_STARTED, started)
    metrics.set_gauge(metrics.READBACK_CYCLE_PROGRESS,
                      min(1.0, cycle["customers_claimed"] / view["customers"]) if cycle and view["customers"] else 0.0)
    metrics.set_gauge(metrics.READBACK_BEHIND, 1.0 if cycle and cycle["latest_on_pace"] is False else 0.0)
    last = view["cycles"][0]["finished_at"] if view["cycles"] else None
    metrics.set_gauge(metrics.READBACK_LAST_CYCLE, datetime.fromisoformat(last).timestamp() if last else 0.0)
