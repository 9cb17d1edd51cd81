"""The notification targets: a generic JSON webhook, a Slack incoming webhook and PagerDuty
Events v2. Each is one JSON POST, built here from a `Notification` and the event id every
attempt repeats, so a receiver can drop a second delivery:

- JSON webhook: `Idempotency-Key: <event id>` and `"id"` in the body;
- PagerDuty: `dedup_key` = the event id (PagerDuty folds repeats into one incident);
- Slack has no idempotency key: a delivery repeated after a crash between send and record can
  show twice there (the window is the one request).

No apprise: it returns only a yes/no per message (we need the HTTP status to tell a refusal,
never retried, from an outage, retried) and does not take our PagerDuty dedup_key or the
webhook's Idempotency-Key; each target here is one POST of a documented shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from billing.settings import Settings
from notify.types import Notification, Severity, event_id


@dataclass(frozen=True)
class Request:
    url: str
    body: dict[str, Any]
    headers: dict[str, str]


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def webhook_request(url: str, n: Notification, eid: str) -> Request:
    body = {"id": eid, "kind": n.kind.value, "subject": n.subject, "title": n.title, "text": n.text,
            "severity": n.severity.value, "commands": n.commands, "fields": n.fields, "link": n.link,
            "resolves": event_id(n.resolves) if n.resolves else None}
    return Request(url, body, {"Idempotency-Key": eid, "X-Billing-Recon-Kind": n.kind.value})


SLACK_ICONS = {Severity.INFO: ":information_source:", Severity.WARNING: ":warning:",
               Severity.ERROR: ":x:", Severity.CRITICAL: ":rotating_light:"}


def slack_request(url: str, n: Notification, eid: str) -> Request:
    lines = [f"{SLACK_ICONS[n.severity]} *{n.title}*"]
    if n.text:
        lines.append(n.text)
    lines += [f"• {k}: {v}" for k, v in n.fields.items()]
    if n.commands:
        lines.append("```" + "\n".join(n.commands) + "```")
    if n.link:
        lines.append(f"<{n.link}|Temporal UI>")
    return Request(url, {"text": "\n".join(lines)}, {})


def pagerduty_request(url: str, routing_key: str, n: Notification, eid: str) -> Request:
    if n.resolves:
        body: dict[str, Any] = {"routing_key": routing_key, "event_action": "resolve",
                                "dedup_key": event_id(n.resolves)}
    else:
        body = {"routing_key": routing_key, "event_action": "trigger", "dedup_key": eid,
                "payload": {"summary": n.title[:1024], "source": "billing-recon", "severity": n.severity.value,
                            "component": "billing-recon", "class": n.kind.value,
                            "custom_details": {"text": n.text, "commands": n.commands, **n.fields}}}
        if n.link:
            body["links"] = [{"href": n.link, "text": "Temporal UI"}]
    return Request(url, body, {})


def requests_for(settings: Settings, n: Notification, eid: str) -> dict[str, Request]:
    """What each configured target gets, by target name."""
    out: dict[str, Request] = {}
    if settings.notify_webhook_url:
        out["webhook"] = webhook_request(settings.notify_webhook_url, n, eid)
    if settings.notify_slack_webhook_url:
        out["slack"] = slack_request(settings.notify_slack_webhook_url, n, eid)
    if settings.notify_pagerduty_routing_key:
        out["pagerduty"] = pagerduty_request(
            settings.notify_pagerduty_url, settings.notify_pagerduty_routing_key, n, eid)
    return out


def configured_targets(settings: Settings) -> list[str]:
    return [name for name, value in (("webhook", settings.notify_webhook_url),
                                     ("slack", settings.notify_slack_webhook_url),
                                     ("pagerduty", settings.notify_pagerduty_routing_key)) if value]


async def send(client: httpx.AsyncClient, req: Request) -> None:
    """POST it. 2xx: done. 408, 425, 429, 5xx, no answer: DeliveryError, retried later. Any
    other 4xx: the target refuses this message (bad key, bad body): permanent."""
    try:
        resp = await client.post(req.url, json=req.body, headers=req.headers)
    except httpx.HTTPError as e:
        raise DeliveryError(f"{type(e).__name__}: {e}", permanent=False) from e
    if resp.is_success:
        return
    transient = resp.status_code in (408, 425, 429) or resp.status_code >= 500
    raise DeliveryError(f"HTTP {resp.status_code}: {resp.text[:200]}", permanent=not transient)
