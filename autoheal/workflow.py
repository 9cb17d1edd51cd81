"""AutoHealControl: the one place auto-healing is paused and resumed (`billing-recon pause` /
`resume` signal it, starting it if needed; workflow id `billing-autoheal`).

Each signal is applied in order: the switch in Postgres is flipped and audited (every corrective
activity reads it before each batch, so new and scheduled runs start observe-only and the state
survives worker and server restarts), then every running ReconcileUsage run gets the same
signal, which stops its corrective writes within one batch. The workflow's details and memo show
the current state in the Temporal UI; its history is the record of who paused when and why."""

from __future__ import annotations

from temporalio import workflow

from common.options import heartbeat_page, short_step

with workflow.unsafe.imports_passed_through():
    from autoheal.activities import AutohealActivities
    from autoheal.types import AutohealControlInput, AutohealView, BroadcastInput, SetAutohealInput
    from common.types import PauseRequest

# Runs that honour the pause/resume signals.
PAUSABLE_WORKFLOWS = ["ReconcileUsage", "CatchUpBackfill", "ReconcileAllocations"]
SIGNALS_PER_RUN = 200  # continue-as-new after this many, to keep the history short


@workflow.defn(name="AutoHealControl")
class AutoHealControl:
    def __init__(self) -> None:
        self._pending: list[tuple[bool, PauseRequest]] = []
        self._state = AutohealView()

    @workflow.signal(name="pause")
    def pause(self, req: PauseRequest) -> None:
        self._pending.append((True, req))

    @workflow.signal(name="resume")
    def resume(self, req: PauseRequest) -> None:
        self._pending.append((False, req))

    @workflow.query(name="state")
    def state(self) -> AutohealView:
        return self._state

    @workflow.run
    async def run(self, inp: AutohealControlInput) -> None:
        self._state = await workflow.execute_activity_method(
            AutohealActivities.get_autoheal, **short_step())
        self._show()
        handled = 0
        while True:
            await workflow.wait_condition(lambda: bool(self._pending))
            while self._pending:
                paused, req = self._pending.pop(0)
                info = workflow.info()
                self._state = await workflow.execute_activity_method(
                    AutohealActivities.set_autoheal,
                    SetAutohealInput(paused=paused, actor=req.actor, reason=req.reason,
                                     workflow_id=info.workflow_id, run_id=info.run_id,
                                     only_if_paused_by=req.only_if_paused_by),
                    **short_step())
                self._show()
                if self._state.paused != paused:
                    # A conditional resume (only_if_paused_by) that did not apply: someone
                    # else's pause is in force, the runs stay paused.
                    handled += 1
                    continue
                await workflow.execute_activity_method(
                    AutohealActivities.broadcast,
                    BroadcastInput(signal="pause" if paused else "resume", request=req,
                                   workflow_types=PAUSABLE_WORKFLOWS),
                    **heartbeat_page())
                handled += 1
            if handled >= SIGNALS_PER_RUN or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._pending:
                    workflow.continue_as_new(inp)

    def _show(self) -> None:
        s = self._state
        if s.paused:
            since = f"{s.since:%Y-%m-%d %H:%M} UTC" if s.since else "?"
            text = f"Auto-healing PAUSED since {since} by {s.actor}: {s.reason or '(no reason)'}"
        else:
            text = "Auto-healing active" + (f" (resumed by {s.actor})" if s.actor else "")
        workflow.set_current_details(text)
        workflow.upsert_memo({"paused": s.paused, "actor": s.actor, "reason": s.reason,
                              "since": s.since.isoformat() if s.since else None})
