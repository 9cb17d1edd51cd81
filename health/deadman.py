"""The dead-man's switch: after each successful run of a configured schedule (by default the
usage sync and the daily full reconciliation), a ping to `DEADMAN_PING_URL` (healthchecks.io,
Cronitor, Better Stack, or any URL answering 2xx). The outside service alerts when the pings
stop: when the whole system, Prometheus and Alertmanager included, is down. docs/temporal-ui.md.

The workflow side (`ping_after_run`) only asks; the activity decides from the worker's settings
whether and where to ping, so no workflow depends on configuration. A ping never fails a run:
a few retries, then a warning in the worker's log (the missing ping is the alert)."""

from __future__ import annotations

import logging

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.exceptions import ActivityError, ApplicationError

from billing.settings import Settings
from common import ui
from common.failures import failure_message
from common.options import external_ping

log = logging.getLogger("billing.deadman")

PING_HTTP_TIMEOUT_SECONDS = 10.0
PATCH = "deadman-ping"
# A URL the service does not know (404), or refuses (401/403): no retry fixes configuration.
BAD_PING_URL = "BadPingUrl"


class DeadmanPing(BaseModel):
    schedule_id: str  # the schedule that started the run (TemporalScheduledById)
    workflow_id: str
    failed: bool = False  # the run failed: ping `<url>/fail` if DEADMAN_PING_ON_FAILURE


class DeadmanPingResult(BaseModel):
    sent: bool
    url: str | None = None  # where (without query string)
    reason: str | None = None  # why not


async def ping_after_run(*, failed: bool) -> None:
    """In a workflow, when it ends: ping the dead-man's switch if a schedule started this run.
    Never raises."""
    schedule = ui.scheduled_by()
    if schedule is None or not workflow.patched(PATCH):
        return
    try:
        await workflow.execute_activity_method(
            DeadmanActivities.ping,
            DeadmanPing(schedule_id=schedule, workflow_id=workflow.info().workflow_id, failed=failed),
            **external_ping(BAD_PING_URL))
    except ActivityError as e:
        workflow.logger.warning("dead-man's switch ping failed: %s", failure_message(e))


def ping_url(settings: Settings, schedule_id: str, *, failed: bool) -> tuple[str | None, str | None]:
    """(url, None) to ping, or (None, why not)."""
    from billing.schedules import SCHEDULE_ID_PREFIX

    name = schedule_id.removeprefix(SCHEDULE_ID_PREFIX)
    if not settings.deadman_ping_url:
        return None, "DEADMAN_PING_URL is not set"
    if name not in settings.deadman_schedules():
        return None, f"schedule {name} is not in DEADMAN_PING_SCHEDULES"
    if failed and not settings.deadman_ping_on_failure:
        return None, "the run failed (DEADMAN_PING_ON_FAILURE is off)"
    url = settings.deadman_ping_url.replace("{schedule}", name)
    return (url.rstrip("/") + "/fail" if failed else url), None


class DeadmanActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="deadman.ping")
    async def ping(self, inp: DeadmanPing) -> DeadmanPingResult:
        import httpx

        url, why_not = ping_url(self.settings, inp.schedule_id, failed=inp.failed)
        if url is None:
            return DeadmanPingResult(sent=False, reason=why_not)
        shown = url.split("?", 1)[0]
        body = f"{inp.workflow_id} {'failed' if inp.failed else 'ok'}"
        async with httpx.AsyncClient(timeout=PING_HTTP_TIMEOUT_SECONDS) as client:
            response = await client.post(url, content=body.encode())
        if response.status_code in (401, 403, 404):
            raise ApplicationError(f"dead-man's switch ping to {shown} refused: HTTP {response.status_code}",
                                   type=BAD_PING_URL, non_retryable=True)
        response.raise_for_status()  # 429, 5xx: retried
        log.info("dead-man's switch pinged %s for %s", shown, inp.workflow_id)
        return DeadmanPingResult(sent=True, url=shown)
