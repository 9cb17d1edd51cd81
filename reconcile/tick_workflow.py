"""UsageTick: the change-driven usage sync (reconcile/tick.py), started by the `usage-sync`
schedule every 5 minutes. Pages of changed keys until none is left (or `max_pages`); the first
page also sweeps async error reports and reads back the keys whose pushes settled. Paused
auto-healing (or dry-run) makes it observe-only: it reports what it would sync and writes
nothing. Deterministic orchestration only; a query reports progress."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from common.options import heartbeat_page, short_step

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from common.types import Mode
    from health.deadman import ping_after_run
    from reconcile.tick import TickActivities
    from reconcile.tick_types import TickCounts, TickPageInput, UsageTickInput, UsageTickResult


@workflow.defn(name="UsageTick", failure_exception_types=[ValidationError])
class UsageTick:
    def __init__(self) -> None:
        self._counts = TickCounts()
        self._pages = 0
        self._mode = Mode.APPLY
        self._write = False

    @workflow.query(name="progress")
    def progress(self) -> UsageTickResult:
        info = workflow.info()
        return UsageTickResult(run_id=info.workflow_id, mode=self._mode, observe_only=not self._write,
                               pages=self._pages, counts=self._counts)

    @workflow.run
    async def run(self, inp: UsageTickInput) -> UsageTickResult:
        # The dead-man's switch (docs/temporal-ui.md): a scheduled tick that synced pings after
        # it, a failed one pings /fail when configured; no-ops for runs no schedule started.
        try:
            result = await self._run(inp)
        except ActivityError:
            await ping_after_run(failed=True)
            raise
        if not result.observe_only:
            await ping_after_run(failed=False)
        return result

    async def _run(self, inp: UsageTickInput) -> UsageTickResult:
        if inp.mode == Mode.PLAN:  # bad input: fail the run, never wedge its task
            raise ApplicationError("UsageTick supports dry-run and apply, not plan", type="ValidationError",
                                   non_retryable=True)
        info = workflow.info()
        paused = await workflow.execute_activity_method(TickActivities.observe_only, **short_step())
        write = inp.mode == Mode.APPLY and not paused
        self._mode, self._write = inp.mode, write
        settle = inp.settle_seconds
        if settle is None:
            settle = await workflow.execute_activity_method(TickActivities.settle_seconds, **short_step())
        while self._pages < inp.max_pages:
            result = await workflow.execute_activity_method(
                TickActivities.page,
                TickPageInput(run_id=info.workflow_id, workflow_run_id=info.run_id, actor=inp.actor,
                              page=self._pages, page_size=inp.page_size, settle_seconds=settle, write=write),
                **heartbeat_page())
            self._pages += 1
            self._counts = self._counts.add(result.counts)
            if result.paused:  # paused mid-tick: this page and the rest only observe
                self._write = write = False
            if not result.more:
                break
        return UsageTickResult(run_id=info.workflow_id, mode=inp.mode, observe_only=not self._write, pages=self._pages,
                               counts=self._counts)
