"""The orchestration every paged Stripe-to-Postgres run shares (ResyncSubscriptions,
RepairCredits): a workflow class states only what differs.

    start (resolve the scope, clear the run's scratch rows) -> new_state -> started
    while the phase is not DONE:
        step (one activity of the current phase; True when the phase is finished)
        finished phase -> NEXT_PHASE, cursor None
        continue-as-new with the carried state when Temporal suggests it
    finishing -> cleanup -> result

A run that continued-as-new starts again from its carried state (`inp.carried`), without the
start. An activity that fails for good fails the run with its own message and type
(`FAILURE_TYPE` when it has none), non-retryably.

Deterministic orchestration only: the hooks run in the workflow and call activities through
`workflow.execute_activity_method` in a fixed order (the recorded histories replay it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar, cast

from temporalio import workflow
from temporalio.exceptions import ActivityError

from common.failures import permanent_failure
from common.options import heartbeat_page, report_query, short_step

with workflow.unsafe.imports_passed_through():
    from common import ui
    from common.paged import (
        PERMANENT_ERRORS,
        CleanupInput,
        ContextInput,
        PagedCarry,
        PagedRunContext,
        PagedRunInput,
    )
    from common.paged_activities import PagedRunActivities

InputT = TypeVar("InputT", bound=PagedRunInput)
CarryT = TypeVar("CarryT", bound=PagedCarry)
ResultT = TypeVar("ResultT")

DONE = "done"  # the last phase of every paged run

# The options of a paged run's activities.
STEP = short_step(*PERMANENT_ERRORS)
PAGE = heartbeat_page(*PERMANENT_ERRORS)
QUERY = report_query(*PERMANENT_ERRORS)


class PagedRun(Generic[InputT, CarryT, ResultT]):
    """Base of a paged-run workflow. A subclass sets FAILURE_TYPE, DEFAULT_REASON and
    NEXT_PHASE, implements `new_state`, `step` and `result` (and, if it needs them, `started`,
    `finishing`, `context_input`), and has its own `@workflow.run` (calling `run_pages`) and
    `progress` query."""

    FAILURE_TYPE: ClassVar[str]  # ApplicationError type when the failed activity gave none
    DEFAULT_REASON: ClassVar[str]  # recorded in audit rows when the input gives none
    NEXT_PHASE: ClassVar[Mapping[Any, Any]]  # phase -> the phase after it (the last -> DONE)

    def __init__(self) -> None:
        self._state: CarryT | None = None

    # ------------------------------------------------------------------ what a run states

    def context_input(self, inp: InputT) -> ContextInput:
        info = workflow.info()
        return ContextInput(run_id=info.workflow_id, workflow_run_id=info.run_id, customer=inp.customer,
                            mode=inp.mode, actor=inp.actor, reason=inp.reason or self.DEFAULT_REASON)

    def new_state(self, inp: InputT, ctx: PagedRunContext) -> CarryT:
        raise NotImplementedError

    async def started(self, inp: InputT, s: CarryT) -> None:
        """After the start, before the first phase (not after a continue-as-new)."""

    async def step(self, inp: InputT, s: CarryT) -> bool:
        """One activity of `s.phase`; True when the phase is finished."""
        raise NotImplementedError

    async def finishing(self, inp: InputT, s: CarryT) -> None:
        """After the last phase, before the cleanup."""

    def result(self, s: CarryT) -> ResultT:
        raise NotImplementedError

    # ------------------------------------------------------------------ the shared run

    async def run_pages(self, inp: InputT) -> ResultT:
        try:
            return await self._run_pages(inp)
        except ActivityError as e:
            raise permanent_failure(e, self.FAILURE_TYPE) from e

    async def _run_pages(self, inp: InputT) -> ResultT:
        if inp.carried is not None:
            self._state = cast(CarryT, inp.carried)
        else:
            ctx = await workflow.execute_activity_method(
                PagedRunActivities.start, self.context_input(inp), **STEP)
            self._state = self.new_state(inp, ctx)
            await self.started(inp, self._state)
        s = self._state

        while s.phase != DONE:
            self._show_progress(s)
            if await self.step(inp, s):
                s.phase = self.NEXT_PHASE[s.phase]
                s.cursor = None
            await self._maybe_continue_as_new(inp)

        await self.finishing(inp, s)
        await workflow.execute_activity_method(
            PagedRunActivities.cleanup, CleanupInput(run_id=s.context.run_id), **STEP)
        return self.result(s)

    def _show_progress(self, s: CarryT) -> None:
        info = workflow.info()
        ui.show_progress(ui.state_details(f"{info.workflow_type} {info.workflow_id}: {s.phase}", s))

    async def _maybe_continue_as_new(self, inp: InputT) -> None:
        if not workflow.info().is_continue_as_new_suggested():
            return
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp.model_copy(update={"carried": self._state}))
