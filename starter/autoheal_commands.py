"""`pause` / `resume`: the global auto-healing switch (AutoHealControl), or one run's.

Idempotent: pausing what is paused (or resuming what runs) sends nothing, writes no audit row,
says so and exits 0; the switch keeps the actor, reason and time of the pause in force."""

from __future__ import annotations

import asyncio

import typer
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from autoheal.control import signal_autoheal
from autoheal.switch import TAKEN_OVER_ACTORS
from autoheal.types import AUTOHEAL_WORKFLOW_ID, AutohealView
from autoheal.workflow import AutoHealControl
from billing.settings import get_settings
from common.types import PauseRequest
from starter.kit import EXIT_BAD_INPUT, console, default_actor, fail, not_blank, run, temporal

RUN_HELP = "One run (workflow id); none: all auto-healing"
ACTOR_HELP = "Who (default $USER; audited)"


STATE_QUERY_SECONDS = 5.0


async def global_state() -> AutohealView | None:
    """The switch as AutoHealControl holds it; None when it is not running (never started, or
    it did not answer its query in time): then only a signal tells."""
    handle = (await temporal()).get_workflow_handle(AUTOHEAL_WORKFLOW_ID)
    try:
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return None
        return await asyncio.wait_for(handle.query(AutoHealControl.state), STATE_QUERY_SECONDS)
    except (RPCError, TimeoutError):
        return None


async def set_global_pause(paused: bool, actor: str, reason: str | None, *,
                           wait_seconds: float = 30) -> tuple[AutohealView, bool]:
    """Signal AutoHealControl (starting it if needed) and wait until the switch has moved.
    Returns the state and whether it changed: already in the asked state, nothing is sent."""
    current = await global_state()
    # An operator's pause takes over the circuit breaker's (which the circuit would resume).
    take_over = paused and current is not None and current.actor in TAKEN_OVER_ACTORS and actor != current.actor
    if current is not None and current.paused == paused and not take_over:
        return current, False
    handle = await signal_autoheal(await temporal(), get_settings().task_queue, paused,
                                   PauseRequest(actor=actor, reason=reason))
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        try:
            state = await handle.query(AutoHealControl.state)
            if state.paused == paused and (not take_over or state.actor == actor):
                return state, True
        except RPCError:
            pass  # not started yet
        if asyncio.get_running_loop().time() > deadline:
            raise fail(f"the {'pause' if paused else 'resume'} signal was sent, but no worker applied it within "
                       f"{wait_seconds:.0f}s: is a worker running on task queue {get_settings().task_queue}?")
        await asyncio.sleep(0.3)


def pause(run_id: str | None = typer.Argument(None, metavar="RUN", help=RUN_HELP),
          reason: str | None = typer.Option(None, help="Why (required for a global pause; audited)", callback=not_blank),
          actor: str | None = typer.Option(None, help=ACTOR_HELP, callback=not_blank)) -> None:
    """Pause auto-healing (all runs, or RUN only) until `resume`.

    Every running and scheduled run becomes observe-only: detection and reports go on,
    corrective writes stop within one batch. With RUN, only that run."""
    who = actor or default_actor()
    if run_id:
        _signal_run(run_id, "pause", who, reason)
        return
    if not reason:
        raise fail("a global pause needs --reason (it is audited and shown in `status`)", EXIT_BAD_INPUT)
    state, changed = run(set_global_pause(True, who, reason))
    if not changed:
        since = f" since {state.since:%Y-%m-%d %H:%M} UTC" if state.since else ""
        console.print(f"auto-healing already PAUSED{since} by {state.actor}: {state.reason}; nothing changed")
        return
    console.print(f"auto-healing [bold red]PAUSED[/bold red] by {state.actor}: {state.reason}")


def resume(run_id: str | None = typer.Argument(None, metavar="RUN", help=RUN_HELP),
           reason: str | None = typer.Option(None, help="Why (audited)", callback=not_blank),
           actor: str | None = typer.Option(None, help=ACTOR_HELP, callback=not_blank)) -> None:
    """Resume auto-healing (or one run's corrective writes)."""
    who = actor or default_actor()
    if run_id:
        _signal_run(run_id, "resume", who, reason)
        return
    state, changed = run(set_global_pause(False, who, reason))
    if not changed:
        console.print("auto-healing is not paused; nothing changed")
        return
    console.print(f"auto-healing [green]resumed[/green] by {state.actor}")


def _signal_run(run_id: str, name: str, actor: str, reason: str | None) -> None:
    """`pause`/`resume` to one run: ReconcileUsage and CatchUpBackfill both take them (and both
    answer `progress` with `paused`). A run already in the asked state gets no signal."""
    want_paused = name == "pause"

    async def go() -> bool:
        handle = (await temporal()).get_workflow_handle(run_id)
        try:
            progress = await asyncio.wait_for(handle.query("progress"), STATE_QUERY_SECONDS)
        except (RPCError, TimeoutError):
            progress = None  # not started yet, or closed: the signal says what there is to say
        if isinstance(progress, dict) and progress.get("paused") is want_paused:
            return False
        await handle.signal(name, PauseRequest(actor=actor, reason=reason))
        return True

    if run(go()):
        console.print(f"{run_id}: {name} sent by {actor}")
    else:
        console.print(f"{run_id}: already {'paused' if want_paused else 'running (not paused)'}; nothing sent")


def register(app: typer.Typer) -> None:
    app.command("pause")(pause)
    app.command("resume")(resume)
