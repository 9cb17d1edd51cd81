"""What a reconciliation run tells operators (notify/): a plan awaiting approval, with the exact
approve/reject commands; a failed run, with the error; drift beyond epsilon, with the top keys.
Each is recorded in the transaction that records the run's new status, once per run and kind."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from billing.settings import Settings
from common.types import RunStatus
from notify.outbox import emit
from notify.types import Notification, NotificationKind, Severity, run_subject, workflow_link
from reconcile.types import AWAITING_APPROVAL

TOP_KEYS = 5

_TOP_KEYS_SQL = """
SELECT customer_id, meter, usage_day, ledger_value, stripe_value, diff, diff_pct, action
  FROM billing.discrepancies
 WHERE run_id = $1 AND beyond_epsilon AND discrepancy_key NOT LIKE 'verify|%'
 ORDER BY abs(diff) DESC NULLS LAST, discrepancy_key LIMIT $2
"""


def _link(settings: Settings, run_id: str) -> str:
    namespace = (activity.info().workflow_namespace if activity.in_activity() else None) or "default"
    return workflow_link(settings.ui_url(), namespace, run_id)


async def on_status(conn: asyncpg.Connection, settings: Settings, run: asyncpg.Record, status: RunStatus) -> None:
    """`run`: the run's row (run_id, workflow_run_id, kind, mode, error) after the change."""
    run_id = run["run_id"]
    subject = run_subject(run_id, run["workflow_run_id"])
    if status == RunStatus.AWAITING_APPROVAL:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM billing.discrepancies WHERE run_id = $1 AND status = ANY($2::text[])",
            run_id, list(AWAITING_APPROVAL))
        await emit(conn, Notification(
            kind=NotificationKind.PLAN_AWAITING_APPROVAL, subject=subject, severity=Severity.WARNING,
            title=f"{run['kind']} run {run_id} awaits approval: {waiting} correction(s)",
            text="Review the plan, then approve or reject it.",
            commands=[f"billing-recon report {run_id}",
                      f'billing-recon approve {run_id} --actor "$USER" --reason "..."',
                      f'billing-recon reject {run_id} --actor "$USER" --reason "..."'],
            fields={"mode": run["mode"], "awaiting": str(waiting)}, link=_link(settings, run_id)))
    elif status == RunStatus.FAILED:
        await emit(conn, Notification(
            kind=NotificationKind.RUN_FAILED, subject=subject, severity=Severity.ERROR,
            title=f"{run['kind']} run {run_id} failed",
            text=run["error"] or "(no error recorded)",
            commands=[f"billing-recon report {run_id}"], fields={"mode": run["mode"]},
            link=_link(settings, run_id)))
    # A dry run is someone looking: its drift is in its report, not worth a message.
    if status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.REJECTED) and run["mode"] != "dry-run":
        top = await conn.fetch(_TOP_KEYS_SQL, run_id, TOP_KEYS)
        if not top:
            return
        total = await conn.fetchval(
            "SELECT count(*) FROM billing.discrepancies WHERE run_id = $1 AND beyond_epsilon "
            "AND discrepancy_key NOT LIKE 'verify|%'", run_id)
        keys = {f"{r['customer_id']} {r['meter']} {r['usage_day'] or ''}".strip():
                f"ledger {r['ledger_value']}, Stripe {r['stripe_value']}, diff {r['diff']} "
                f"({float(r['diff_pct'] or 0):.2%}) -> {r['action'] or 'none'}" for r in top}
        await emit(conn, Notification(
            kind=NotificationKind.DRIFT_BEYOND_EPSILON, subject=subject, severity=Severity.WARNING,
            title=f"{run['kind']} run {run_id}: {total} key(s) drifted beyond epsilon",
            text=f"Top {len(top)} by absolute difference below; the run's mode was {run['mode']}.",
            commands=[f"billing-recon report {run_id} --export-discrepancies drift.csv"],
            fields=keys, link=_link(settings, run_id)))
