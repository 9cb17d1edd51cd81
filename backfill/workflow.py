"""CatchUpBackfill: the "run reconciliation for --start-date/--end-date" runbook after an outage.

One ReconcileUsage child per UTC day, with a deterministic id (`reconcile-day-<day>-<mode>`),
at most `max_concurrent_days` at a time. A day that already has a completed run is not started
again, so re-running the same (or an overlapping) range does no duplicate work, and a failed day
is retried alone by re-running the backfill (or a backfill of just that day). Days older than
Stripe's 35-day window are reconciled locally by the child and reported as needing an invoice
adjustment. Then a webhook replay over the part of the range Stripe still lists (30 days), and a
subscription resync."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, date, datetime, time, timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

from common.failures import failure_message
from common.options import short_step

with workflow.unsafe.imports_passed_through():
    from autoheal.activities import AutohealActivities
    from backfill.activities import BackfillActivities
    from backfill.types import (
        BackfillProgress,
        BackfillResult,
        CatchUpBackfillInput,
        CompletedRunsInput,
        DayOutcome,
        DayResult,
    )
    from common import ui
    from common.types import STRIPE_EVENT_RETENTION_DAYS, Mode, PauseRequest
    from reconcile.types import Counts, ReconcileResult, ReconcileUsageInput
    from webhooks.types import ReplayResult, ReplayWebhooksInput

# Temporal remembers a closed child's id only for the namespace's retention; the completed-run
# check in Postgres is what makes "already done" durable.
CHILD_ID_REUSE = WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY


def day_run_id(day: date, mode: Mode, customers: list[str] | None = None, meters: list[str] | None = None) -> str:
    """A day's run id. A run limited to some customers or meters does not stand for the whole
    day: its scope is part of the id."""
    base = f"reconcile-day-{day.isoformat()}-{mode.value}"
    if not customers and not meters:
        return base
    scope = "|".join(sorted(customers or [])) + "#" + "|".join(sorted(meters or []))
    return f"{base}-{hashlib.sha256(scope.encode()).hexdigest()[:10]}"


@workflow.defn(name="CatchUpBackfill")
class CatchUpBackfill:
    def __init__(self) -> None:
        self._progress = BackfillProgress()
        self._paused = False

    # Sent by AutoHealControl to every running backfill: no new day starts while paused (the
    # days in flight get the same signal themselves).
    @workflow.signal(name="pause")
    def pause(self, req: PauseRequest) -> None:
        self._paused = self._progress.paused = True

    @workflow.signal(name="resume")
    def resume(self, req: PauseRequest) -> None:
        self._paused = self._progress.paused = False

    @workflow.query(name="progress")
    def progress(self) -> BackfillProgress:
        return self._progress

    @workflow.run
    async def run(self, inp: CatchUpBackfillInput) -> BackfillResult:
        today = workflow.now().date()
        if inp.start_date > today:
            raise ApplicationError(f"start_date {inp.start_date} is in the future (today is {today} UTC)",
                                   type="InvalidRange", non_retryable=True)
        end = min(inp.end_date, today)
        warnings: list[str] = []
        if end < inp.end_date:
            warnings.append(f"end_date {inp.end_date} is in the future: the backfill stops at {end}")
        days = [inp.start_date + timedelta(days=i) for i in range((end - inp.start_date).days + 1)]
        p = self._progress
        p.phase, p.days_total = "days", len(days)
        if inp.mode == Mode.APPLY and workflow.patched("backfill-honours-pause"):
            state = await workflow.execute_activity_method(
                AutohealActivities.get_autoheal, **short_step())
            self._paused = p.paused = self._paused or state.paused

        done = set((await workflow.execute_activity_method(
            BackfillActivities.completed_runs,
            CompletedRunsInput(run_ids=[day_run_id(d, inp.mode, inp.customers, inp.meters) for d in days]),
            **short_step())).completed)
        gate = asyncio.Semaphore(inp.max_concurrent_days)

        async def one(day: date) -> DayResult:
            run_id = day_run_id(day, inp.mode, inp.customers, inp.meters)
            if run_id in done:
                p.days_already_done += 1
                p.days_done += 1
                return DayResult(day=day, run_id=run_id, outcome=DayOutcome.ALREADY_DONE)
            async with gate:
                if inp.mode == Mode.APPLY:
                    await workflow.wait_condition(lambda: not self._paused)
                p.days_in_flight.append(day)
                try:
                    return await self._reconcile_day(inp, day, run_id)
                finally:
                    p.days_in_flight.remove(day)
                    p.days_done += 1
                    self._show_progress()

        results = await asyncio.gather(*(one(d) for d in days))
        p.days_failed = [r.day for r in results if r.outcome == DayOutcome.FAILED]
        counts = Counts()
        for r in results:
            if r.counts is not None:
                counts = counts.add(r.counts)
        if counts.needs_invoice_adjustment:
            warnings.append(f"{counts.needs_invoice_adjustment} key(s) are older than Stripe's 35-day window: "
                            "reconciled locally, they need an invoice adjustment")

        replay = await self._replay(inp, end) if inp.replay_webhooks else {"skipped": "not requested"}
        resync = await self._resync(inp) if inp.resync_subscriptions else {"skipped": "not requested"}
        p.phase = "done"
        return BackfillResult(
            workflow_id=workflow.info().workflow_id, mode=inp.mode, start_date=inp.start_date, end_date=end,
            days=list(results), counts=counts, replay=replay, resync=resync, warnings=warnings)

    async def _reconcile_day(self, inp: CatchUpBackfillInput, day: date, run_id: str) -> DayResult:
        request = ReconcileUsageInput(
            start_date=day, end_date=day, customers=inp.customers, meters=inp.meters, mode=inp.mode,
            actor=inp.actor, settle_seconds=inp.settle_seconds,
            auto_approve_over_reporting=inp.auto_approve_over_reporting)
        try:
            result = await workflow.execute_child_workflow(
                "ReconcileUsage", request, id=run_id, id_reuse_policy=CHILD_ID_REUSE,
                result_type=ReconcileResult)
        except WorkflowAlreadyStartedError:
            return DayResult(day=day, run_id=run_id, outcome=DayOutcome.RUNNING_ELSEWHERE,
                             error="a run with this id is open or completed elsewhere")
        except ChildWorkflowError as e:
            return DayResult(day=day, run_id=run_id, outcome=DayOutcome.FAILED, error=failure_message(e))
        if result.observe_only:
            return DayResult(day=day, run_id=run_id, outcome=DayOutcome.OBSERVE_ONLY, counts=result.counts,
                             error="auto-healing was paused for the whole run: reported, not corrected; "
                                   "run the backfill again after `billing-recon resume`")
        return DayResult(day=day, run_id=run_id, outcome=DayOutcome.DONE, counts=result.counts)

    def _show_progress(self) -> None:
        info = workflow.info()
        ui.show_progress(ui.state_details(f"CatchUpBackfill {info.workflow_id}: {self._progress.phase}",
                                          self._progress))

    async def _replay(self, inp: CatchUpBackfillInput, end: date) -> dict:
        self._progress.phase = "replay"
        self._show_progress()
        now = workflow.now()
        since = max(datetime.combine(inp.start_date, time(), tzinfo=UTC),
                    now - timedelta(days=STRIPE_EVENT_RETENTION_DAYS) + timedelta(minutes=1))
        until = min(datetime.combine(end + timedelta(days=1), time(), tzinfo=UTC), now)
        if since >= until:
            return {"skipped": f"the range is older than Stripe's {STRIPE_EVENT_RETENTION_DAYS}-day event retention"}
        child_id = f"backfill-replay-{inp.start_date}-{end}-{inp.mode.value}"
        try:
            r = await workflow.execute_child_workflow(
                "ReplayWebhooks", ReplayWebhooksInput(since=since, until=until, mode=inp.mode, actor=inp.actor),
                id=child_id, id_reuse_policy=CHILD_ID_REUSE, result_type=ReplayResult)
        except WorkflowAlreadyStartedError:
            return {"skipped": f"{child_id} already ran"}
        except ChildWorkflowError as e:
            return {"failed": failure_message(e)}
        return r.model_dump(mode="json")

    async def _resync(self, inp: CatchUpBackfillInput) -> dict:
        self._progress.phase = "resync"
        self._show_progress()
        child_id = f"backfill-resync-{inp.start_date}-{inp.end_date}-{inp.mode.value}"
        try:
            r = await workflow.execute_child_workflow(
                "ResyncSubscriptions", {"mode": inp.mode.value, "actor": inp.actor},
                id=child_id, id_reuse_policy=CHILD_ID_REUSE, result_type=dict)
        except WorkflowAlreadyStartedError:
            return {"skipped": f"{child_id} already ran"}
        except ChildWorkflowError as e:
            return {"failed": failure_message(e)}
        return r
