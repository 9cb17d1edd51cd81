"""Operations commands: global pause/resume, backfill, schedules, status, audit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError

from billing import db
from billing import schedules as schedules_mod
from billing.models import (
    AUTOHEAL_WORKFLOW_ID,
    AutohealControlInput,
    AutohealView,
    BackfillProgress,
    BackfillResult,
    CatchUpBackfillInput,
    Mode,
    PauseRequest,
    ReconcileProgress,
)
from billing.settings import get_settings
from billing.temporal_client import connect, connect_config
from starter.commands import (
    _database_url,
    _fail,
    _run,
    console,
    err,
    follow,
    print_workflow_failure,
)
from starter.webhook_commands import parse_time

schedules_app = typer.Typer(no_args_is_help=True)
OUR_WORKFLOWS = ["ReconcileUsage", "CatchUpBackfill", "ReplayWebhooks", "ResyncSubscriptions", "RepairCredits"]


def default_actor() -> str:
    return get_settings().actor()


def run_link(workflow_id: str | None, run_id: str | None = None) -> str | None:
    if not workflow_id:
        return None
    ns = connect_config().get("namespace") or "default"
    tail = f"/{run_id}" if run_id else ""
    return f"{get_settings().ui_url()}/namespaces/{ns}/workflows/{workflow_id}{tail}/history"


# ---------------------------------------------------------------------------- pause / resume


async def set_global_pause(paused: bool, actor: str, reason: str | None, *, wait_seconds: float = 30) -> AutohealView:
    """Signal AutoHealControl (starting it if needed) and wait until the switch has moved."""
    client = await connect()
    handle = await client.start_workflow(
        "AutoHealControl", AutohealControlInput(), id=AUTOHEAL_WORKFLOW_ID, task_queue=get_settings().task_queue,
        start_signal="pause" if paused else "resume", start_signal_args=[PauseRequest(actor=actor, reason=reason)],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        try:
            state = await handle.query("state", result_type=AutohealView)
            if state.paused == paused:
                return state
        except RPCError:
            pass  # not started yet
        if asyncio.get_running_loop().time() > deadline:
            raise _fail(f"the {'pause' if paused else 'resume'} signal was sent, but no worker applied it within "
                        f"{wait_seconds:.0f}s: is a worker running on task queue {get_settings().task_queue}?")
        await asyncio.sleep(0.3)


def pause(run: str | None = typer.Argument(None, help="One run (workflow id); none: all auto-healing"),
          reason: str | None = typer.Option(None, help="Why (required for a global pause; audited)"),
          actor: str | None = typer.Option(None, help="Who (default $USER; audited)")) -> None:
    """Pause auto-healing: every running and scheduled run becomes observe-only (detection and
    reports go on, corrective writes stop within one batch) until `resume`. With RUN, only
    that run."""
    who = actor or default_actor()
    if run:
        _signal_run(run, "pause", who, reason)
        return
    if not reason:
        raise _fail("a global pause needs --reason (it is audited and shown in `status`)", 2)
    state = _run(set_global_pause(True, who, reason))
    console.print(f"auto-healing [bold red]PAUSED[/bold red] by {state.actor}: {state.reason}")


def resume(run: str | None = typer.Argument(None, help="One run (workflow id); none: all auto-healing"),
           reason: str | None = typer.Option(None),
           actor: str | None = typer.Option(None, help="Who (default $USER; audited)")) -> None:
    """Resume auto-healing (or one run's corrective writes)."""
    who = actor or default_actor()
    if run:
        _signal_run(run, "resume", who, reason)
        return
    state = _run(set_global_pause(False, who, reason))
    console.print(f"auto-healing [green]resumed[/green] by {state.actor}")


def _signal_run(run: str, name: str, actor: str, reason: str | None) -> None:
    async def go() -> None:
        client = await connect()
        await client.get_workflow_handle(run).signal(name, PauseRequest(actor=actor, reason=reason))

    _run(go())
    console.print(f"{run}: {name} sent by {actor}")


# ---------------------------------------------------------------------------- backfill


def backfill(
    start_date: str = typer.Option(..., help="First UTC day (YYYY-MM-DD)"),
    end_date: str = typer.Option(..., help="Last UTC day, inclusive"),
    apply: bool = typer.Option(False, "--apply", help="Correct drift (default: dry-run)"),
    concurrency: int = typer.Option(2, help="Days reconciled at once"),
    customer: list[str] = typer.Option([], help="Only these customers (repeat)"),
    meter: list[str] = typer.Option([], help="Only these meters (repeat)"),
    replay: bool = typer.Option(True, "--replay/--no-replay", help="Replay webhooks over the range"),
    resync: bool = typer.Option(True, "--resync/--no-resync", help="Resync subscriptions afterwards"),
    actor: str = typer.Option(None, help="Who runs it (default $USER)"),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Catch up after an outage: reconcile every day of a range (one child per day), then replay
    webhooks and resync subscriptions. Re-running the same range does no duplicate work."""
    try:
        request = CatchUpBackfillInput(
            start_date=date.fromisoformat(start_date), end_date=date.fromisoformat(end_date),
            mode=Mode.APPLY if apply else Mode.DRY_RUN, customers=customer, meters=meter,
            max_concurrent_days=concurrency, replay_webhooks=replay, resync_subscriptions=resync,
            actor=actor or default_actor())
    except Exception as e:
        raise _fail(f"invalid arguments: {e}", 2) from e
    if request.start_date > datetime.now(UTC).date():
        raise _fail(f"invalid arguments: start_date {request.start_date} is in the future", 2)
    workflow_id = f"backfill-{request.start_date}-{request.end_date}-{request.mode.value}"
    raise typer.Exit(_run(_backfill(request, workflow_id, wait=wait, as_json=as_json)))


async def _backfill(request: CatchUpBackfillInput, workflow_id: str, *, wait: bool, as_json: bool) -> int:
    client = await connect()
    handle = await client.start_workflow(
        "CatchUpBackfill", request, id=workflow_id, task_queue=get_settings().task_queue,
        result_type=BackfillResult, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
    if not wait:
        if as_json:
            print(json.dumps({"workflow_id": workflow_id, "status": "started"}))
        else:
            console.print(f"started {workflow_id}")
        return 0
    total = (request.end_date - request.start_date).days + 1
    try:
        with Progress(TextColumn("[bold]days"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[phase]}"),
                      TimeElapsedColumn(), console=err, disable=as_json) as bar:
            task = bar.add_task("days", total=total, phase="starting")

            def show(p: BackfillProgress) -> None:
                in_flight = f" (in flight: {', '.join(map(str, p.days_in_flight))})" if p.days_in_flight else ""
                bar.update(task, completed=p.days_done, total=p.days_total or total, phase=p.phase + in_flight)

            result: BackfillResult = await follow(handle, BackfillProgress, show)
    except WorkflowFailureError as e:
        return print_workflow_failure(workflow_id, e, as_json=as_json)
    if as_json:
        print(result.model_dump_json())
    else:
        t = Table(title=f"{workflow_id}: {result.start_date}..{result.end_date} ({result.mode.value})")
        for col in ("day", "outcome", "run", "drift", "pushed", "error"):
            t.add_column(col, overflow="fold")
        for d in result.days:
            t.add_row(str(d.day), d.outcome.value, d.run_id, str(d.counts.drift_count if d.counts else "-"),
                      str(d.counts.corrections_pushed if d.counts else "-"), d.error or "")
        console.print(t)
        console.print(f"webhook replay: {_summary(result.replay)}")
        console.print(f"subscription resync: {_summary(result.resync)}")
        for w in result.warnings:
            err.print(f"[yellow]warning:[/yellow] {w}")
    return 1 if result.failed_days else 0


def _summary(part: dict | None) -> str:
    if not part:
        return "-"
    if "skipped" in part or "failed" in part:
        return ", ".join(f"{k}: {v}" for k, v in part.items())
    counts = part.get("counts") or {}
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or json.dumps(part)[:200]


# ---------------------------------------------------------------------------- schedules


def _load_defs(file: Path | None) -> list[schedules_mod.ScheduleDef]:
    try:
        return schedules_mod.load(file or get_settings().schedules_file)
    except schedules_mod.ScheduleConfigError as e:
        raise _fail(str(e), 2) from e


@schedules_app.command("apply")
def schedules_apply(file: Path | None = typer.Option(None, help="Default BILLING_SCHEDULES_FILE or billing/schedules.toml"),
                    as_json: bool = typer.Option(False, "--json")) -> None:
    """Create or update every schedule of the file (idempotent)."""
    defs = _load_defs(file)

    async def go() -> dict[str, str]:
        return await schedules_mod.apply(await connect(), defs, get_settings().task_queue)

    outcome = _run(go())
    if as_json:
        print(json.dumps(outcome))
        return
    for name, what in outcome.items():
        console.print(f"{schedules_mod.SCHEDULE_ID_PREFIX}{name}: {what}")


async def describe_schedules(client: Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(schedules_mod.SCHEDULE_ID_PREFIX):
            continue
        desc = await client.get_schedule_handle(entry.id).describe()
        info, state = desc.info, desc.schedule.state
        recent = info.recent_actions[-1] if info.recent_actions else None
        out.append({
            "id": entry.id,
            "paused": state.paused,
            "note": state.note,
            "next_runs": [t.isoformat() for t in info.next_action_times[:3]],
            "last_run": recent.started_at.isoformat() if recent else None,
            "last_workflow_id": getattr(recent.action, "workflow_id", None) if recent else None,
            "actions": info.num_actions,
            "skipped_overlap": info.num_actions_skipped_overlap,
            "running": [getattr(r, "workflow_id", None) for r in info.running_actions],
        })
    return sorted(out, key=lambda s: s["id"])


@schedules_app.command("list")
def schedules_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every billing-* schedule: paused or not, next and last runs, skipped overlaps."""
    async def go() -> list[dict[str, Any]]:
        return await describe_schedules(await connect())

    rows = _run(go())
    if as_json:
        print(json.dumps(rows))
        return
    _print_schedules(rows)


def _print_schedules(rows: list[dict[str, Any]]) -> None:
    t = Table(title="schedules")
    for col in ("id", "state", "next run (UTC)", "last run (UTC)", "runs", "skipped (overlap)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["id"], "paused" if r["paused"] else "active", (r["next_runs"] or ["-"])[0],
                  r["last_run"] or "-", str(r["actions"]), str(r["skipped_overlap"]))
    console.print(t)


@schedules_app.command("trigger")
def schedules_trigger(name: str = typer.Argument(..., help="Schedule name (usage-sync) or id (billing-usage-sync)")) -> None:
    """Run a schedule's action now (the manual job run), under its overlap policy."""
    sid = name if name.startswith(schedules_mod.SCHEDULE_ID_PREFIX) else schedules_mod.SCHEDULE_ID_PREFIX + name

    async def go() -> None:
        await (await connect()).get_schedule_handle(sid).trigger()

    _run(go())
    console.print(f"{sid}: triggered")


# ---------------------------------------------------------------------------- status


async def gather_status() -> dict[str, Any]:
    conn = await db.connect(_database_url())
    try:
        ah = await conn.fetchrow("SELECT paused, since, actor, reason FROM billing.autoheal_state")
        last = await conn.fetchrow(
            """SELECT run_id, workflow_run_id, mode, window_start, window_end, finished_at
               FROM billing.reconciliation_runs WHERE status = 'completed' AND mode = 'apply' AND NOT observe_only
               ORDER BY finished_at DESC NULLS LAST LIMIT 1""")
        latest_run = await conn.fetchval(
            "SELECT run_id FROM billing.reconciliation_runs WHERE finished_at IS NOT NULL "
            "ORDER BY finished_at DESC LIMIT 1")
        open_discrepancies = await conn.fetchval(
            """SELECT count(*) FROM billing.discrepancies WHERE run_id = $1
               AND status IN ('observed', 'proposed', 'held', 'pending', 'failed', 'unfixable')""", latest_run) \
            if latest_run else 0
        inbox = {r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM billing.stripe_events GROUP BY status")}
        oldest_received = await conn.fetchval(
            "SELECT min(received_at) FROM billing.stripe_events WHERE status = 'received'")
    finally:
        await conn.close()
    now = datetime.now(UTC)
    status: dict[str, Any] = {
        "autoheal": {"paused": bool(ah and ah["paused"]), "since": ah["since"] if ah else None,
                     "actor": ah["actor"] if ah else None, "reason": ah["reason"] if ah else None},
        "last_successful_reconciliation": None,
        "open_discrepancies": open_discrepancies, "open_discrepancies_run": latest_run,
        "inbox": {"received": inbox.get("received", 0), "failed": inbox.get("failed", 0),
                  "processed": inbox.get("processed", 0), "ignored": inbox.get("ignored", 0),
                  "oldest_received_age_seconds": (now - oldest_received).total_seconds() if oldest_received else None},
        "schedules": [], "running": [], "temporal": "ok",
    }
    if last is not None:
        status["last_successful_reconciliation"] = {
            "run_id": last["run_id"], "window": [str(last["window_start"]), str(last["window_end"])],
            "finished_at": last["finished_at"], "age_seconds": (now - last["finished_at"]).total_seconds(),
            "link": run_link(last["run_id"], last["workflow_run_id"])}
    try:
        client = await connect()
        status["schedules"] = await describe_schedules(client)
        status["running"] = await running_workflows(client)
    except RPCError as e:
        status["temporal"] = f"unreachable: {e.message}"
    except Exception as e:  # connection refused surfaces as a RuntimeError from the SDK
        status["temporal"] = f"unreachable: {e}"
    return status


async def running_workflows(client: Client) -> list[dict[str, Any]]:
    types = " OR ".join(f"WorkflowType = '{t}'" for t in OUR_WORKFLOWS)
    out: list[dict[str, Any]] = []
    async for wf in client.list_workflows(f"ExecutionStatus = 'Running' AND ({types})", limit=50):
        row: dict[str, Any] = {"workflow_id": wf.id, "type": wf.workflow_type, "started": wf.start_time,
                               "link": run_link(wf.id, wf.run_id)}
        try:
            handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
            if wf.workflow_type == "ReconcileUsage":
                p = await handle.query("progress", result_type=ReconcileProgress)
                if p is not None:
                    row["progress"] = f"{p.phase.value}{' (paused)' if p.paused else ''}: " \
                                      f"{p.customers_scanned} customers, {p.counts.drift_count} drift"
            elif wf.workflow_type == "CatchUpBackfill":
                b = await handle.query("progress", result_type=BackfillProgress)
                row["progress"] = f"{b.phase}: {b.days_done}/{b.days_total} days, {len(b.days_failed)} failed"
        except RPCError:
            pass
        out.append(row)
    return out


def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Paused or not, schedules, running workflows with progress, last successful
    reconciliation and its age, open discrepancies, webhook inbox backlog."""
    data = asyncio.run(gather_status())
    if as_json:
        print(json.dumps(data, default=str))
        return
    a = data["autoheal"]
    if a["paused"]:
        console.print(f"auto-healing [bold red]PAUSED[/bold red] since {a['since']:%Y-%m-%d %H:%M} UTC by "
                      f"{a['actor']}: {a['reason']}")
    else:
        console.print("auto-healing [green]active[/green]")
    last = data["last_successful_reconciliation"]
    if last:
        hours = last["age_seconds"] / 3600
        colour = "red" if hours > 24 else "green"
        console.print(f"last successful reconciliation: {last['run_id']} ({last['window'][0]}..{last['window'][1]}), "
                      f"[{colour}]{hours:.1f} h ago[/{colour}]")
    else:
        console.print("last successful reconciliation: [red]none[/red]")
    console.print(f"open discrepancies: {data['open_discrepancies']} (run {data['open_discrepancies_run'] or '-'})")
    i = data["inbox"]
    age = f", oldest waiting {i['oldest_received_age_seconds']:.0f}s" if i["oldest_received_age_seconds"] else ""
    console.print(f"webhook inbox: {i['received']} received, {i['failed']} failed{age}")
    if data["temporal"] != "ok":
        err.print(f"[red]Temporal {data['temporal']}[/red]")
        return
    _print_schedules(data["schedules"])
    t = Table(title="running workflows")
    for col in ("workflow", "type", "progress", "link"):
        t.add_column(col, overflow="fold")
    for r in data["running"]:
        t.add_row(r["workflow_id"], r["type"], r.get("progress", ""), r["link"] or "")
    console.print(t)


# ---------------------------------------------------------------------------- audit


def audit(customer: str | None = typer.Option(None, help="Only writes that touched this customer"),
          since: str | None = typer.Option(None, help="2026-11-01, 2026-11-01T12:00:00Z or 3d/12h"),
          action: str | None = typer.Option(None, help="Only this action (e.g. credits.grant)"),
          limit: int = typer.Option(200, min=1, max=100_000),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Every corrective action: who, why, before/after, and a link to its workflow run."""
    try:
        since_t = parse_time(since) if since else None
    except ValueError as e:
        raise _fail(str(e), 2) from e
    rows = asyncio.run(_load_audit(customer, since_t, action, limit))
    if as_json:
        print(json.dumps(rows, default=str))
        return
    t = Table(title=f"audit ({len(rows)} rows, newest first)")
    for col in ("at (UTC)", "actor", "action", "entity", "customer", "before", "after", "reason", "run"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(f"{r['at']:%Y-%m-%d %H:%M:%S}", r["actor"], r["action"], f"{r['entity_type']} {r['entity_id']}",
                  r["customer_id"] or "", _short(r["before"]), _short(r["after"]), r["reason"] or "",
                  r["link"] or "")
    console.print(t)


def _short(v: Any) -> str:
    return "" if v is None else json.dumps(v, default=str)[:80]


async def _load_audit(customer: str | None, since: datetime | None, action: str | None, limit: int) -> list[dict[str, Any]]:
    conn = await db.connect(_database_url())
    try:
        rows = await conn.fetch(
            """
            SELECT id, at, actor, action, entity_type, entity_id, customer_id, before, after, reason,
                   workflow_id, run_id, correlation_id
            FROM billing.audit_log
            WHERE ($1::text IS NULL OR customer_id = $1 OR (entity_type = 'customer' AND entity_id = $1))
              AND ($2::timestamptz IS NULL OR at >= $2)
              AND ($3::text IS NULL OR action = $3)
            ORDER BY at DESC, id DESC LIMIT $4
            """, customer, since, action, limit)
    finally:
        await conn.close()
    return [{**dict(r), "link": run_link(r["workflow_id"], r["run_id"])} for r in rows]


def register(root: typer.Typer) -> None:
    root.command("pause")(pause)
    root.command("resume")(resume)
    root.command("backfill")(backfill)
    root.add_typer(schedules_app, name="schedules", help="Temporal Schedules (instead of cron).")
    root.command("status")(status)
    root.command("audit")(audit)

