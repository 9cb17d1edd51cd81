"""What a daily checks run tells operators (notify/): one `daily_check_failed` notification per
run with failed checks, recorded in the transaction that records the results."""

from __future__ import annotations

import asyncpg

from checks.types import RecordChecksInput
from notify.outbox import emit
from notify.types import Notification, NotificationKind, Severity, run_subject


async def on_recorded(conn: asyncpg.Connection, inp: RecordChecksInput) -> None:
    failed = [r for r in inp.results if not r.passed]
    if not failed:
        return
    names = ", ".join(r.check.value for r in failed)
    await emit(conn, Notification(
        kind=NotificationKind.DAILY_CHECK_FAILED, subject=run_subject(inp.run_id, inp.workflow_run_id),
        severity=Severity.WARNING, title=f"Daily checks: {len(failed)} failed ({names})",
        text="Each check's runbook is in docs/runbooks/ (BillingCheck*).",
        commands=["billing-recon checks --last", "billing-recon checks"],
        fields={r.check.value: (r.error or r.summary)[:300] for r in failed}))
