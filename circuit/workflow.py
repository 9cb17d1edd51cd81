"""StripeCircuit: the one place the Stripe circuit breaker is decided (workflow id
`billing-stripe-circuit:<task queue>`, started by every worker; docs/circuit-breaker.md).

Every check interval it adds up every worker's Stripe outcomes over the window (Postgres). Past
the threshold the circuit opens: auto-healing is paused through AutoHealControl, actor
`circuit-breaker`, the reason giving the figures; detection goes on. After the open time a
probe (one cheap read) decides: success closes it and resumes auto-healing if the pause in force
is still the circuit's own; failure keeps it open for another open time."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from common.options import short_step, smoke_check

with workflow.unsafe.imports_passed_through():
    from circuit.activities import CircuitActivities
    from circuit.types import AutohealSignal, CheckResult, CircuitInput, CircuitState, Transition

CHECKS_PER_RUN = 500  # continue-as-new after this many checks, to keep the history short


@workflow.defn(name="StripeCircuit")
class StripeCircuit:
    def __init__(self) -> None:
        self._last = CheckResult(state=CircuitState.CLOSED)

    @workflow.query(name="state")
    def state(self) -> CheckResult:
        return self._last

    @workflow.run
    async def run(self, inp: CircuitInput) -> None:
        for _ in range(CHECKS_PER_RUN):
            res = await workflow.execute_activity_method(CircuitActivities.check, **short_step())
            if res.transition == Transition.OPENED:
                await workflow.execute_activity_method(
                    CircuitActivities.pause_autoheal, AutohealSignal(reason=res.reason or "Stripe circuit open"),
                    **short_step())
            elif res.transition == Transition.HALF_OPEN:
                self._show(res)
                probe = await workflow.execute_activity_method(CircuitActivities.probe, **smoke_check())
                res = await workflow.execute_activity_method(CircuitActivities.record_probe, probe, **short_step())
            if res.resume:  # closed by a probe (or by turning the breaker off), its own pause in force
                await workflow.execute_activity_method(
                    CircuitActivities.resume_autoheal, AutohealSignal(reason=f"Stripe circuit closed: {res.reason}"),
                    **short_step())
            self._last = res
            self._show(res)
            await workflow.sleep(timedelta(seconds=res.next_check_seconds))
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(inp)

    def _show(self, res: CheckResult) -> None:
        since = f" since {res.since:%Y-%m-%d %H:%M:%S} UTC" if res.since else ""
        text = f"Stripe circuit {res.state.value.upper().replace('_', '-')}{since}"
        if res.state != CircuitState.CLOSED and res.reason:
            text += f": {res.reason}"
        workflow.set_current_details(text)
