"""Starting workflows and following them: `start_and_follow()` is the one way a command starts a
workflow (by its class's run method, never by a name), shows its progress, prints its result
and reports its failure."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar, cast

from pydantic import BaseModel
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError
from temporalio.types import MethodAsyncSingleParam, ParamType, SelfType

from billing.settings import get_settings
from starter.kit import (
    BAD_INPUT_FAILURES,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    console,
    err,
    fail,
    temporal,
)

P = TypeVar("P")  # a workflow's progress model
R = TypeVar("R")  # a workflow's result

POLL_SECONDS = 0.5


def workflow_type(cls: type) -> str:
    """The workflow type the server knows a class by: its `@workflow.defn(name=...)`."""
    name = workflow._Definition.must_from_class(cls).name
    if not name:
        raise TypeError(f"{cls.__name__} is a dynamic workflow: it has no type name")
    return name


# ---------------------------------------------------------------------------- progress


class Step(NamedTuple):
    """One answer of a `progress` query as shown: a line, and how far when it is counted."""

    text: str
    done: int | None = None
    total: int | None = None


@contextmanager
def live(label: str, *, total: int | None = None, quiet: bool = False) -> Iterator[Callable[[Step], None]]:
    """A progress line on stderr (none when quiet): a bar when `total` is known, else a spinner.
    Yields the function that shows a Step."""
    columns: list[str | ProgressColumn] = (
        [TextColumn(f"[bold]{escape(label)}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}")]
        if total is not None else [SpinnerColumn(), TextColumn(f"[bold]{escape(label)}:[/bold] {{task.description}}")])
    with Progress(*columns, TimeElapsedColumn(), console=err, disable=quiet) as bar:
        task = bar.add_task("starting", total=total)

        def show(step: Step) -> None:
            counted: dict[str, Any] = {"completed": step.done} if step.done is not None else {}
            if step.total:
                counted["total"] = step.total
            bar.update(task, description=step.text, **counted)

        yield show


@dataclass(frozen=True)
class Until(Generic[P]):
    """Where a command stops following a workflow that goes on without it (e.g. a stored plan
    awaiting approval): the first `progress` answer that `holds` is shown (`show`, or with --json
    the one object `to_json`) and the command exits 0."""

    holds: Callable[[P], bool]
    show: Callable[[P], None]
    to_json: Callable[[P], dict[str, Any]]


@dataclass(frozen=True)
class Watch(Generic[P]):
    """What a waiting command shows while its workflow runs: the `progress` query's answers,
    each described as a Step, under `label` (a bar when `total` is known); `until`: where it
    stops waiting before the result."""

    progress_type: type[P]
    label: str
    describe: Callable[[P], Step]
    total: int | None = None
    interval: float = POLL_SECONDS
    until: Until[P] | None = None


class StoppedFollowing(Exception, Generic[P]):
    """`follow` stopped before the result: `progress` satisfied its `until`."""

    def __init__(self, progress: P) -> None:
        super().__init__("stopped following")
        self.progress = progress


async def follow(handle: WorkflowHandle[Any, R], progress_type: type[P],
                 on_progress: Callable[[P], Any], interval: float = POLL_SECONDS, *,
                 until: Callable[[P], bool] | None = None) -> R:
    """Await a workflow's result, handing each answer of its `progress` query to `on_progress`
    (which may be async) meanwhile. Raises what the result raises (WorkflowFailureError), or
    StoppedFollowing at the first answer that satisfies `until` (the workflow goes on)."""
    result_task = asyncio.ensure_future(handle.result())
    while not result_task.done():
        try:
            p = await handle.query("progress", result_type=progress_type)
        except RPCError:
            p = None  # not started yet, or between continue-as-new runs
        if p is not None:
            shown = on_progress(p)
            if inspect.isawaitable(shown):
                await shown
            if until is not None and until(p):
                result_task.cancel()
                raise StoppedFollowing(p)
        await asyncio.wait({result_task}, timeout=interval)
    return result_task.result()


# ---------------------------------------------------------------------------- start


async def start(
    run_method: MethodAsyncSingleParam[SelfType, ParamType, R], request: ParamType, workflow_id: str, *,
    client: Client | None = None, task_queue: str | None = None,
    id_conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.UNSPECIFIED,
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
) -> WorkflowHandle[SelfType, R]:
    """Start a workflow by its class's run method (`ReconcileUsage.run`), never by a name."""
    client = client or await temporal()
    return await client.start_workflow(
        run_method, request, id=workflow_id, task_queue=task_queue or get_settings().task_queue,
        id_conflict_policy=id_conflict_policy, id_reuse_policy=id_reuse_policy)


def report_failure(workflow_id: str, e: WorkflowFailureError, *, as_json: bool, id_key: str = "workflow_id",
                   **extra: Any) -> int:
    """A failed workflow, reported one way: one JSON object on stdout with --json, else one red
    line on stderr. Returns the exit code (2 when the workflow refused its input, else 1)."""
    message = getattr(e.cause, "message", None) or str(e.cause)
    error_type = getattr(e.cause, "type", None)
    if as_json:
        print(json.dumps({id_key: workflow_id, "status": "failed", "error": message, "type": error_type, **extra}))
    else:
        fail(f"{workflow_id} failed: {message}")
    return EXIT_BAD_INPUT if error_type in BAD_INPUT_FAILURES else EXIT_FAILED


async def start_and_follow(
    run_method: MethodAsyncSingleParam[SelfType, ParamType, R], request: ParamType, workflow_id: str, *,
    as_json: bool, show: Callable[[R], None], outcome: Callable[[R], int] | None = None,
    to_json: Callable[[R], dict[str, Any]] | None = None, wait: bool = True, watch: Watch[Any] | None = None,
    started: str | None = None, id_key: str = "workflow_id", extra: dict[str, Any] | None = None,
    id_conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.UNSPECIFIED,
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
) -> int:
    """Start a workflow by its class and return the command's exit code.

    With `wait`: follow it to its result (progress on stderr per `watch`, none with --json),
    then print the result: `show(result)`, or with --json one JSON object (`to_json(result)`,
    default the result model). The code is `outcome(result)` (default 0). A failed workflow is
    reported by `report_failure`, whose code it is. Where `watch.until` stops it first, that
    progress is printed instead, 0. Without `wait`: say it started (`started`,
    or one JSON object), 0. `id_key`/`extra` name the id and add fields to the JSON."""
    handle = await start(run_method, request, workflow_id, id_conflict_policy=id_conflict_policy,
                         id_reuse_policy=id_reuse_policy)
    extra = extra or {}
    if not wait:
        if as_json:
            print(json.dumps({id_key: workflow_id, "status": "started", **extra}))
        else:
            console.print(started or f"started {workflow_id}")
        return EXIT_OK
    try:
        if watch is None:
            result = await handle.result()
        else:
            with live(watch.label, total=watch.total, quiet=as_json) as step:
                describe = watch.describe
                result = await follow(handle, watch.progress_type, lambda p: step(describe(p)), watch.interval,
                                      until=watch.until.holds if watch.until else None)
    except WorkflowFailureError as e:
        return report_failure(workflow_id, e, as_json=as_json, id_key=id_key, **extra)
    except StoppedFollowing as stopped:
        assert watch is not None and watch.until is not None
        if as_json:
            print(json.dumps({id_key: workflow_id, **extra, **watch.until.to_json(stopped.progress)}))
        else:
            watch.until.show(stopped.progress)
        return EXIT_OK
    if not as_json:
        show(result)
    elif to_json is not None:
        print(json.dumps(to_json(result)))
    else:
        print(cast(BaseModel, result).model_dump_json())
    return outcome(result) if outcome else EXIT_OK
