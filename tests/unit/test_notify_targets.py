"""What each notification target receives, and how its answers are classified."""

from __future__ import annotations

import httpx
import pytest

from billing.settings import Settings
from notify.outbox import backoff
from notify.targets import DeliveryError, configured_targets, requests_for, send
from notify.types import Notification, NotificationKind, Severity, dedupe_key, event_id

N = Notification(kind=NotificationKind.PLAN_AWAITING_APPROVAL, subject="recon-1@r1", severity=Severity.WARNING,
                 title="usage run recon-1 awaits approval: 3 correction(s)", text="Review the plan.",
                 commands=['billing-recon approve recon-1 --actor "$USER" --reason "..."'],
                 fields={"mode": "plan"}, link="http://ui/namespaces/default/workflows/recon-1")
ALL = Settings.model_validate({"NOTIFY_WEBHOOK_URL": "http://127.0.0.1:9/hook",
                               "NOTIFY_SLACK_WEBHOOK_URL": "http://127.0.0.1:9/slack",
                               "NOTIFY_PAGERDUTY_ROUTING_KEY": "R0UT1NG"})


def test_the_event_id_is_stable_per_subject_and_kind() -> None:
    key = N.dedupe_key()
    assert key == "recon-1@r1|plan_awaiting_approval" == dedupe_key("recon-1@r1", NotificationKind.PLAN_AWAITING_APPROVAL)
    assert event_id(key) == event_id(key) and event_id(key).startswith("brn_") and len(event_id(key)) == 36
    assert event_id(key) != event_id(dedupe_key("recon-1@r2", NotificationKind.PLAN_AWAITING_APPROVAL))


def test_every_configured_target_gets_its_own_shape_with_the_event_id() -> None:
    eid = event_id(N.dedupe_key())
    reqs = requests_for(ALL, N, eid)
    assert list(reqs) == configured_targets(ALL) == ["webhook", "slack", "pagerduty"]
    hook = reqs["webhook"]
    assert hook.headers["Idempotency-Key"] == eid and hook.body["id"] == eid
    assert hook.body["kind"] == "plan_awaiting_approval" and hook.body["commands"] == N.commands
    slack = reqs["slack"].body["text"]
    assert slack.startswith(":warning: *usage run recon-1 awaits approval") and "billing-recon approve recon-1" in slack
    pd = reqs["pagerduty"]
    assert pd.url == "https://events.pagerduty.com/v2/enqueue"
    assert pd.body["routing_key"] == "R0UT1NG" and pd.body["event_action"] == "trigger" and pd.body["dedup_key"] == eid
    assert pd.body["payload"]["severity"] == "warning" and pd.body["payload"]["source"] == "billing-recon"


def test_a_closing_notification_resolves_the_opening_one_in_pagerduty() -> None:
    opened = dedupe_key("stripe-circuit@t0", NotificationKind.CIRCUIT_OPENED)
    closed = Notification(kind=NotificationKind.CIRCUIT_CLOSED, subject="stripe-circuit@t0", title="closed",
                          resolves=opened)
    pd = requests_for(ALL, closed, event_id(closed.dedupe_key()))["pagerduty"].body
    assert pd == {"routing_key": "R0UT1NG", "event_action": "resolve", "dedup_key": event_id(opened)}


def test_no_target_configured_means_no_request() -> None:
    assert requests_for(Settings(), N, "x") == {} and configured_targets(Settings()) == []


@pytest.mark.parametrize(("status", "permanent"), [(400, True), (403, True), (404, True), (408, False),
                                                   (429, False), (500, False), (503, False)])
async def test_answers_are_retried_or_refused_by_status(status: int, permanent: bool) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text="no"))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(DeliveryError) as e:
            await send(client, requests_for(ALL, N, "x")["webhook"])
    assert e.value.permanent is permanent and f"HTTP {status}" in str(e.value)


async def test_no_answer_is_retried_and_2xx_is_done() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(DeliveryError) as e:
            await send(client, requests_for(ALL, N, "x")["webhook"])
    assert not e.value.permanent
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(202))) as client:
        await send(client, requests_for(ALL, N, "x")["webhook"])


def test_backoff_doubles_from_5_s_to_at_most_15_min() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff(50).total_seconds() == 900


def test_a_long_title_is_cut_not_refused() -> None:
    n = Notification(kind=NotificationKind.RUN_FAILED, subject="x" * 2000, title="run " + "x" * 2000 + " failed")
    assert len(n.title) == 300 and n.title.endswith("…") and len(n.subject) == 2000
