"""The notifications outbox against Postgres: recorded once per (subject, kind); each target
sent once; a target that fails transiently is retried alone, later; a refusal is never retried;
a poison row never holds the others back; attempts run out into `failed`."""

from __future__ import annotations

from notify import outbox
from notify.targets import DeliveryError, Request
from notify.types import Notification, NotificationKind

TWO_TARGETS = {"webhook": Request("http://hook", {}, {}), "slack": Request("http://slack", {}, {})}


def note(subject: str) -> Notification:
    return Notification(kind=NotificationKind.RUN_FAILED, subject=subject, title=f"{subject} failed")


class Targets:
    """Stand-in senders: `fail` maps a URL to the error it raises (permanent or not)."""

    def __init__(self, fail: dict[str, bool] | None = None) -> None:
        self.fail = fail or {}
        self.sent: list[str] = []

    async def send(self, req: Request) -> None:
        if req.url in self.fail:
            raise DeliveryError("HTTP 503" if not self.fail[req.url] else "HTTP 400", permanent=self.fail[req.url])
        self.sent.append(req.url)


async def _deliver(pool, targets: Targets, requests=TWO_TARGETS, max_attempts: int = 3) -> dict[str, str]:
    out = {}
    for row in await outbox.claim_due(pool, 100):
        out[row["dedupe_key"]] = await outbox.deliver_row(pool, row, lambda n, eid: requests, targets.send,
                                                          max_attempts)
    return out


async def test_recorded_once_per_subject_and_kind(clean_db):
    assert await outbox.emit(clean_db, note("run-a@1")) is True
    assert await outbox.emit(clean_db, note("run-a@1")) is False
    assert await outbox.emit(clean_db, note("run-a@2")) is True  # a reused workflow id is a new run
    assert await clean_db.fetchval("SELECT count(*) FROM billing.notifications") == 2


async def test_a_transient_failure_retries_only_the_target_that_failed(clean_db):
    await outbox.emit(clean_db, note("run-b@1"))
    flaky = Targets(fail={"http://slack": False})
    assert await _deliver(clean_db, flaky) == {"run-b@1|run_failed": "pending"}
    assert flaky.sent == ["http://hook"]
    row = await clean_db.fetchrow("SELECT attempts, delivered, last_error, next_attempt_at > now() AS later "
                                  "FROM billing.notifications")
    assert row["attempts"] == 1 and set(row["delivered"]) == {"webhook"} and "slack: HTTP 503" in row["last_error"]
    assert row["later"]  # backed off: not due again at once
    assert await _deliver(clean_db, Targets()) == {}
    await clean_db.execute("UPDATE billing.notifications SET next_attempt_at = now()")
    healed = Targets()
    assert await _deliver(clean_db, healed) == {"run-b@1|run_failed": "sent"}
    assert healed.sent == ["http://slack"]  # the webhook, answered before, is not sent again


async def test_a_refusal_is_not_retried_and_does_not_hold_the_others_back(clean_db):
    await outbox.emit(clean_db, note("run-c@1"))
    await outbox.emit(clean_db, note("run-d@1"))
    refusing = Targets(fail={"http://bad": True})

    def requests(n: Notification, eid: str) -> dict[str, Request]:
        return {"webhook": Request("http://bad" if n.subject == "run-c@1" else "http://hook", {}, {})}

    got = {}
    for row in await outbox.claim_due(clean_db, 100):
        got[row["dedupe_key"]] = await outbox.deliver_row(
            clean_db, row, requests, refusing.send, 10)
    assert got == {"run-c@1|run_failed": "failed", "run-d@1|run_failed": "sent"}
    assert await clean_db.fetchval("SELECT last_error FROM billing.notifications WHERE subject = 'run-c@1'") \
        == "webhook: HTTP 400"


async def test_attempts_run_out_into_failed_and_no_target_is_said(clean_db):
    await outbox.emit(clean_db, note("run-e@1"))
    down = Targets(fail={"http://hook": False, "http://slack": False})
    statuses = []
    for _ in range(3):
        await clean_db.execute("UPDATE billing.notifications SET next_attempt_at = now()")
        statuses += list((await _deliver(clean_db, down, max_attempts=3)).values())
    assert statuses == ["pending", "pending", "failed"]
    await outbox.emit(clean_db, note("run-f@1"))
    assert await _deliver(clean_db, Targets(), requests={}) == {"run-f@1|run_failed": "no_target"}


async def test_a_notification_that_fails_to_record_never_fails_what_it_reports(clean_db):
    async with clean_db.acquire() as conn, conn.transaction():
        await outbox.emit(conn, note("run-g@1"))  # the business write's stand-in
        async with outbox.never_failing(conn, "run-g"):
            await outbox.emit(conn, note("run-h@1"))
            await conn.execute("SELECT 1 / 0")  # the notification's SQL fails
    # The caller's transaction committed; the failed notification's partial write was undone.
    assert [r["subject"] for r in await clean_db.fetch("SELECT subject FROM billing.notifications")] == ["run-g@1"]
