"""Notifications nobody emits at a moment of its own: runs stuck (not finished long after they
started, awaiting approval excepted: that one is notified when it begins), and auto-healing
paused for too long. The dispatcher sweeps for them before each delivery round; the outbox's
key makes each one once per run or per pause."""

from __future__ import annotations

import asyncpg

from billing.settings import Settings
from notify.outbox import emit
from notify.types import Notification, NotificationKind, Severity, run_subject

STUCK_RUNS_SQL = """
SELECT run_id, workflow_run_id, kind, mode, status, started_at,
       extract(epoch FROM now() - started_at)::float8 AS age
  FROM billing.reconciliation_runs
 WHERE finished_at IS NULL AND status <> 'awaiting_approval'
   AND started_at < now() - make_interval(secs => $1)
 ORDER BY started_at LIMIT 100
"""


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
