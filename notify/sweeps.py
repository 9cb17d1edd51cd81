"""Notifications nobody emits at a moment of its own: runs stuck (not finished long after they
started, awaiting approval excepted: that one is notified when it begins), auto-healing paused
for too long, and the other jobs' runs that failed (found through Temporal's visibility API, so
that no job has to remember to notify). The dispatcher sweeps for them before each delivery
round; the outbox's key makes each one once per run or per pause."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.client import Client
from temporalio.service import RPCError

from billing.settings import Settings
from notify.outbox import emit
from notify.types import Notification, NotificationKind, Severity, run_subject, workflow_link

log = logging.getLogger(__name__)

# Jobs whose failed runs the sweep reports. ReconcileUsage reports its own (in the transaction
# that records the failure); per-event and control workflows are not runs an operator follows.
JOB_WORKFLOWS = ("CatchUpBackfill", "ReplayWebhooks", "ResyncSubscriptions", "ResyncInvoices", "RepairCredits",
                 "AdjustCredits", "ReconcileAllocations", "Smoke")
# Failures closed this long ago are still looked for (a dispatcher down for a while catches up).
FAILED_LOOKBACK = timedelta(days=1)

STUCK_RUNS_SQL = """
SELECT run_id, workflow_run_id, kind, mode, status, started_at,
       extract(epoch FROM now() - started_at)::float8 AS age
  FROM billing.reconciliation_runs
 WHERE finished_at IS NULL AND status <> 'awaiting_approval'
   AND started_at < now() - make_interval(secs => $1)
 ORDER BY started_at LIMIT 100
"""


async def failed_job_runs(conn: asyncpg.Connection, client: Client, settings: Settings, namespace: str,
                          *, now: datetime | None = None) -> int:
    """Failed or timed-out runs of the other jobs on this deployment's task queue, closed within
    FAILED_LOOKBACK."""
    since = ((now or datetime.now(UTC)) - FAILED_LOOKBACK).strftime("%Y-%m-%dT%H:%M:%SZ")
    types = " OR ".join(f"WorkflowType = '{t}'" for t in JOB_WORKFLOWS)
    query = (f"(ExecutionStatus = 'Failed' OR ExecutionStatus = 'TimedOut') AND CloseTime > '{since}' "
             f"AND TaskQueue = '{settings.task_queue}' AND ({types})")
    emitted = 0
    try:
        async for wf in client.list_workflows(query, limit=100):
            failed = wf.status.name.lower().replace("_", " ") if wf.status else "failed"
            emitted += await emit(conn, Notification(
                kind=NotificationKind.RUN_FAILED, subject=run_subject(wf.id, wf.run_id), severity=Severity.ERROR,
                title=f"{wf.workflow_type} run {wf.id} {failed}",
                text="Its failure is in the Temporal UI (the last event of the run).",
                commands=[f"temporal workflow describe --workflow-id {wf.id} --run-id {wf.run_id}"],
                fields={"closed_at": wf.close_time.isoformat() if wf.close_time else ""},
                link=workflow_link(settings.ui_url(), namespace, wf.id)))
    except RPCError as e:  # visibility unavailable: the next round tries again
        log.warning("listing failed runs for notifications failed: %s", e)
    return emitted


async def sweep(conn: asyncpg.Connection, settings: Settings) -> int:
    emitted = 0
    for r in await conn.fetch(STUCK_RUNS_SQL, float(settings.notify_stuck_run_seconds)):
        emitted += await emit(conn, Notification(
            kind=NotificationKind.RUN_STUCK, subject=run_subject(r["run_id"], r["workflow_run_id"]),
            severity=Severity.WARNING,
            title=f"{r['kind']} run {r['run_id']} stuck: {r['status']} for {r['age'] / 3600:.1f} h",
            text="The run has not finished. Look at its pending activity in the Temporal UI.",
            commands=[f"billing-recon report {r['run_id']}", "billing-recon runs --open"],
            fields={"mode": r["mode"], "status": r["status"], "started_at": r["started_at"].isoformat()}))
    paused = await conn.fetchrow(
        "SELECT since, actor, reason, extract(epoch FROM now() - since)::float8 AS age FROM billing.autoheal_state "
        "WHERE paused AND since < now() - make_interval(secs => $1)", float(settings.notify_paused_too_long_seconds))
    if paused is not None:
        emitted += await emit(conn, Notification(
            kind=NotificationKind.AUTOHEAL_PAUSED_TOO_LONG, subject=f"autoheal-pause@{paused['since'].isoformat()}",
            severity=Severity.WARNING,
            title=f"Auto-healing paused for {paused['age'] / 3600:.1f} h by {paused['actor']}",
            text=f"Reason: {paused['reason'] or '(none)'}. Drift is detected but not corrected while paused.",
            commands=['billing-recon resume --reason "..."', "billing-recon status"]))
    return emitted
