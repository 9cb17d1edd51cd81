"""ReplayWebhooks: catch up on Stripe events that never arrived or never got processed.

1. List Stripe's events in the window (at most Stripe's 30-day retention) and store every one
   missing from the inbox (dry-run: only list them).
2. Process every inbox row of the window still `received` or `failed` (the missed ones, the
   ones stuck behind a Temporal outage, the ones that failed before) in creation order, through
   the same handler as a live delivery.

Re-running it is safe: processed events are skipped by the handler itself."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from common.options import heartbeat_listing, heartbeat_page, short_step

with workflow.unsafe.imports_passed_through():
    from common.types import STRIPE_EVENT_RETENTION_DAYS, Mode
    from webhooks.activities import MAX_REPORTED_FAILURES, StripeEventActivities
    from webhooks.types import (
        PendingPageInput,
        ProcessPageInput,
        ReplayCounts,
        ReplayProgress,
        ReplayResult,
        ReplayWebhooksInput,
        ReplayWindow,
        SyncInboxInput,
    )



@workflow.defn(name="ReplayWebhooks")
class ReplayWebhooks:
    def __init__(self) -> None:
        self._progress = ReplayProgress()

    @workflow.query(name="progress")
    def progress(self) -> ReplayProgress:
        return self._progress

    @workflow.run
    async def run(self, inp: ReplayWebhooksInput) -> ReplayResult:
        now = workflow.now()
        until = min(inp.until or now, now)
        since = inp.since or until - timedelta(days=inp.days)
        warnings: list[str] = []
        retention_floor = now - timedelta(days=STRIPE_EVENT_RETENTION_DAYS)
        list_since = since
        if since < retention_floor:
            list_since = retention_floor
            warnings.append(
                f"the window starts {since.isoformat()}, beyond Stripe's {STRIPE_EVENT_RETENTION_DAYS}-day "
                f"event retention: events before {retention_floor.isoformat()} cannot be listed from "
                "Stripe; only the inbox was swept for them")
        window = ReplayWindow(since=since, until=until, types=inp.types)

        self._progress.phase = "listing"
        synced = await workflow.execute_activity_method(
            StripeEventActivities.sync_inbox,
            SyncInboxInput(window=ReplayWindow(since=list_since, until=until, types=inp.types),
                           dry_run=inp.mode == Mode.DRY_RUN, page_size=inp.page_size, sweep_since=since),
            **heartbeat_listing())
        counts = synced.counts
        self._progress.counts = counts
        failures: list[str] = []

        if inp.mode == Mode.APPLY:
            self._progress.phase = "processing"
            received_before = workflow.now()
            cursor = None
            while True:
                page = await workflow.execute_activity_method(
                    StripeEventActivities.pending_page,
                    PendingPageInput(window=window, after=cursor, limit=inp.page_size,
                                     received_before=received_before),
                    **short_step())
                if not page.event_ids:
                    break
                done = await workflow.execute_activity_method(
                    StripeEventActivities.process_page,
                    ProcessPageInput(event_ids=page.event_ids, workflow_id=workflow.info().workflow_id),
                    **heartbeat_page())
                counts = counts.add(ReplayCounts(replayed=done.counts.replayed, ignored=done.counts.ignored,
                                                 failed=done.counts.failed))
                failures.extend(done.failures[: MAX_REPORTED_FAILURES - len(failures)])
                self._progress.counts = counts
                cursor = page.next_cursor
        self._progress.phase = "done"
        return ReplayResult(
            workflow_id=workflow.info().workflow_id, mode=inp.mode, since=since, until=until,
            types=inp.types, counts=counts, sample=synced.sample, failures=failures, warnings=warnings)
