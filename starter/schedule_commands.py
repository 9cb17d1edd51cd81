"""`schedules apply | list | trigger`: Temporal Schedules (instead of cron), from one TOML file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from temporalio.client import Client

from billing import schedules as schedules_mod
from billing.settings import get_settings
from starter.kit import EXIT_BAD_INPUT, console, fail, run, temporal

app = typer.Typer(no_args_is_help=True)


def _load_defs(file: Path | None) -> list[schedules_mod.ScheduleDef]:
    try:
        return schedules_mod.load(file or get_settings().schedules_file)
    except schedules_mod.ScheduleConfigError as e:
        raise fail(str(e), EXIT_BAD_INPUT) from e


@app.command("apply")
def schedules_apply(file: Path | None = typer.Option(None, help="Default BILLING_SCHEDULES_FILE or billing/schedules.toml"),
                    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: name -> created|updated")) -> None:
    """Create or update every schedule of the file (idempotent)."""
    defs = _load_defs(file)

    async def go() -> dict[str, str]:
        return await schedules_mod.apply(await temporal(), defs, get_settings().task_queue)

    outcome = run(go())
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


@app.command("list")
def schedules_list(as_json: bool = typer.Option(False, "--json", help="Print one JSON array instead of a table")) -> None:
    """Every billing-* schedule: paused or not, next and last runs, skipped overlaps."""
    async def go() -> list[dict[str, Any]]:
        return await describe_schedules(await temporal())

    rows = run(go())
    if as_json:
        print(json.dumps(rows))
        return
    print_schedules(rows)


def print_schedules(rows: list[dict[str, Any]]) -> None:
    t = Table(title="schedules")
    for col in ("id", "state", "next run (UTC)", "last run (UTC)", "runs", "skipped (overlap)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["id"], "paused" if r["paused"] else "active", (r["next_runs"] or ["-"])[0],
                  r["last_run"] or "-", str(r["actions"]), str(r["skipped_overlap"]))
    console.print(t)


@app.command("trigger")
def schedules_trigger(name: str = typer.Argument(..., help="Schedule name (usage-sync) or id (billing-usage-sync)")) -> None:
    """Run a schedule's action now (the manual job run), under its overlap policy."""
    sid = name if name.startswith(schedules_mod.SCHEDULE_ID_PREFIX) else schedules_mod.SCHEDULE_ID_PREFIX + name

    async def go() -> None:
        await (await temporal()).get_schedule_handle(sid).trigger()

    run(go())
    console.print(f"{sid}: triggered")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="schedules", help="Temporal Schedules (instead of cron).")
