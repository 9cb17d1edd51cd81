"""Schedules declared in one TOML file (default: billing/schedules.toml), applied to Temporal
idempotently. Parsing and validation are pure; `apply`, `describe`, `trigger` talk to Temporal."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, Field, field_validator, model_validator
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.workflow import _Definition

from allocations.workflow import ReconcileAllocations
from backfill.workflow import CatchUpBackfill
from checks.workflow import DailyChecks
from common import ui
from common.ui_interceptor import warn_unregistered
from credits.repair_workflow import RepairCredits
from readback.workflow import RollingReadBack
from reconcile.tick_workflow import UsageTick
from reconcile.workflow import ReconcileUsage
from resync.invoices_workflow import ResyncInvoices
from resync.workflow import ResyncSubscriptions
from revenue.workflow import RevenueReconciliation
from webhooks.replay_workflow import ReplayWebhooks

SCHEDULE_ID_PREFIX = "billing-"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}
# What a schedule may start: workflow type name (as the file and the server say it) -> the
# class's run method, which starts it.
KNOWN_WORKFLOWS: dict[str, Callable[..., Awaitable[Any]]] = {
    _Definition.must_from_class(wf).name or wf.__name__: wf.run
    for wf in (ReconcileUsage, ReplayWebhooks, ResyncSubscriptions, ResyncInvoices, RepairCredits, CatchUpBackfill,
               ReconcileAllocations, RevenueReconciliation, DailyChecks, UsageTick, RollingReadBack)
}


class ScheduleConfigError(ValueError):
    pass


def parse_duration(value: str) -> timedelta:
    m = _DURATION.match(value.strip())
    if not m:
        raise ScheduleConfigError(f"{value!r} is not a duration like 30s, 5m, 1h or 1d")
    amount = int(m.group(1))
    if amount <= 0:
        raise ScheduleConfigError(f"{value!r} must be positive")
    return timedelta(**{_UNITS[m.group(2)]: amount})


class DailyAt(BaseModel):
    hour: int = Field(ge=0, le=23)
    minute: int = Field(default=0, ge=0, le=59)


def _input_model(run: Callable[..., Awaitable[Any]]) -> type[BaseModel]:
    """The pydantic model a workflow's run method takes (one argument in)."""
    hints = get_type_hints(run)
    return next(t for name, t in hints.items() if name != "return")


class ScheduleDef(BaseModel):
    name: str
    workflow: str
    note: str
    input: dict[str, Any] = Field(default_factory=dict)
    every: str | None = None
    at: DailyAt | None = None
    overlap: Literal["skip", "buffer_one", "cancel_other", "allow_all"] = "skip"
    catchup_window: str = "10m"
    # Every scheduled run is bounded: under overlap `skip` a stuck run (waiting for an approval
    # nobody gives, an activity that never finishes) would otherwise skip every later tick,
    # silently. Temporal ends it (TimedOut) after this long and the next tick starts afresh.
    execution_timeout: str
    paused: bool = False

    @field_validator("workflow")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in KNOWN_WORKFLOWS:
            raise ValueError(f"unknown workflow {v!r} (one of {', '.join(sorted(KNOWN_WORKFLOWS))})")
        return v

    @model_validator(mode="after")
    def _one_spec(self) -> ScheduleDef:
        if (self.every is None) == (self.at is None):
            raise ValueError(f"schedule {self.name}: give exactly one of `every` and `at`")
        if self.every is not None:
            parse_duration(self.every)
        parse_duration(self.catchup_window)
        timeout = parse_duration(self.execution_timeout)
        # The input as the workflow will read it: refused here, not by every tick.
        inp = _input_model(KNOWN_WORKFLOWS[self.workflow]).model_validate(self.input)
        wait = getattr(inp, "approval_timeout_seconds", None)
        if wait is not None and timedelta(seconds=wait) >= timeout:
            raise ValueError(
                f"input.approval_timeout_seconds ({wait}) must be shorter than execution_timeout "
                f"({self.execution_timeout}): a run waiting for an approval must end by itself "
                "(completing what it did) before Temporal times it out")
        pace = getattr(inp, "every_minutes", None)  # the read-back paces its slices by its interval
        if pace is not None and (self.every is None or parse_duration(self.every) != timedelta(minutes=pace)):
            raise ValueError(f"schedule {self.name}: input.every_minutes ({pace}) must equal `every` "
                             f"({self.every}): each run reads what keeps the cycle on pace until the next")
        if pace is not None and timedelta(minutes=pace) * 0.9 + timedelta(minutes=5) > timeout:
            raise ValueError(f"schedule {self.name}: execution_timeout ({self.execution_timeout}) must exceed 90% of "
                             f"`every` plus 5 minutes: a run waits up to 90% of its interval for its slice")
        return self

    @property
    def schedule_id(self) -> str:
        return SCHEDULE_ID_PREFIX + self.name

    def to_schedule(self, task_queue: str, *, search_attributes: bool = True) -> Schedule:
        """`search_attributes=False`: for a namespace where ours are not registered."""
        meta = ui.start_metadata(self.workflow, f"sched-{self.name}-<time>",
                                 _input_model(KNOWN_WORKFLOWS[self.workflow]).model_validate(self.input),
                                 correlation_id=None, note=f"Started by schedule `{self.schedule_id}`: {self.note}")
        if self.every is not None:
            spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=parse_duration(self.every))])
        else:
            assert self.at is not None
            spec = ScheduleSpec(calendars=[ScheduleCalendarSpec(
                hour=[ScheduleRange(self.at.hour)], minute=[ScheduleRange(self.at.minute)],
                comment=f"daily {self.at.hour:02d}:{self.at.minute:02d} UTC")])
        return Schedule(
            action=ScheduleActionStartWorkflow(
                KNOWN_WORKFLOWS[self.workflow], args=[self.input], id=f"sched-{self.name}", task_queue=task_queue,
                execution_timeout=parse_duration(self.execution_timeout),
                typed_search_attributes=meta.search_attributes if search_attributes else TypedSearchAttributes.empty,
                static_summary=meta.summary, static_details=meta.details),
            spec=spec,
            policy=SchedulePolicy(overlap=OVERLAP[self.overlap],
                                  catchup_window=parse_duration(self.catchup_window)),
            state=ScheduleState(note=self.note, paused=self.paused),
        )


def default_file() -> Path:
    return Path(str(resources.files("billing").joinpath("schedules.toml")))


def load(path: Path | None = None) -> list[ScheduleDef]:
    path = path or default_file()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScheduleConfigError(f"{path}: {e}") from e
    defaults = data.get("defaults", {})
    out: list[ScheduleDef] = []
    for name, body in (data.get("schedules") or {}).items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise ScheduleConfigError(f"{path}: schedule name {name!r}: use lowercase letters, digits and '-'")
        try:
            out.append(ScheduleDef(name=name, **{**defaults, **body}))
        except ValueError as e:
            raise ScheduleConfigError(f"{path}: schedule {name}: {e}") from e
    if not out:
        raise ScheduleConfigError(f"{path}: no [schedules.<name>] table")
    return out


async def apply(client: Client, defs: list[ScheduleDef], task_queue: str) -> dict[str, str]:
    """Create each schedule, or update it in place. A schedule paused by an operator stays
    paused (its note too) unless the file says `paused = true`. Returns name -> created|updated.
    Where our search attributes are not registered (`billing-recon temporal setup`), schedules
    are applied without them (their runs still run; they cannot be found by them), warning once."""
    outcome: dict[str, str] = {}
    with_attributes = True
    for d in defs:
        try:
            outcome[d.name] = await _create_or_update(
                client, d, d.to_schedule(task_queue, search_attributes=with_attributes))
            continue
        except RPCError as e:
            if not (with_attributes and ui.unregistered_attribute(e)):
                raise
            warn_unregistered(e)
            with_attributes = False
        outcome[d.name] = await _create_or_update(client, d, d.to_schedule(task_queue, search_attributes=False))
    return outcome


async def _create_or_update(client: Client, d: ScheduleDef, desired: Schedule) -> str:
    try:
        await client.create_schedule(d.schedule_id, desired)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        if state.paused and not d.paused:
            desired.state = state  # an operator's pause (and its note) wins
        return ScheduleUpdate(schedule=desired)

    await client.get_schedule_handle(d.schedule_id).update(update)
    return "updated"
