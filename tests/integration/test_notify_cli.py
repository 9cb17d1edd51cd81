"""`billing-recon notifications` and `notifications retry` as an operator runs them."""

from __future__ import annotations

import json

import pytest

from notify import outbox
from notify.types import Notification, NotificationKind
from tests.integration.cli_helpers import cli

pytestmark = pytest.mark.integration


async def test_list_and_retry_failed_notifications(cli_env, clean_db):
    for subject in ("run-1@a", "run-2@b"):
        await outbox.emit(clean_db, Notification(kind=NotificationKind.RUN_FAILED, subject=subject,
                                                 title=f"usage run {subject} failed"))
    await clean_db.execute("UPDATE billing.notifications SET status = 'failed', attempts = 12, "
                           "last_error = 'webhook: HTTP 404: gone' WHERE subject = 'run-1@a'")

    code, out, err = await cli(cli_env, "notifications", "--json")
    assert code == 0, err
    assert {(r["subject"], r["status"]) for r in json.loads(out)} == {("run-1@a", "failed"), ("run-2@b", "pending")}
    code, out, _ = await cli(cli_env, "notifications", "--status", "failed")
    assert code == 0 and "failed=1, pending=1" in out and "HTTP 404: gone" in out and "run-2@b" not in out
    code, _, err = await cli(cli_env, "notifications", "--status", "lost")
    assert code == 2 and "lost" in err

    code, _, err = await cli(cli_env, "notifications", "retry", "run-9@z|run_failed")
    assert code == 1 and "no failed notification run-9@z|run_failed" in err
    code, out, err = await cli(cli_env, "notifications", "retry", "run-1@a|run_failed")
    assert code == 0 and "1 notification(s) queued again" in out, err
    row = await clean_db.fetchrow("SELECT status, attempts FROM billing.notifications WHERE subject = 'run-1@a'")
    assert (row["status"], row["attempts"]) == ("pending", 0)
    code, out, _ = await cli(cli_env, "notifications", "retry")
    assert code == 0 and "no failed notification; nothing changed" in out
