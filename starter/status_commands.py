"""`status` (is it healthy, what runs) and `audit` (every corrective write)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table
from temporalio.client import Client
from temporalio.service import RPCError

from backfill.workflow import CatchUpBackfill
from checks import store as checks_store
from checks.workflow import DailyChecks
from common import ui
from credits.repair_workflow import RepairCredits
from reconcile.workflow import ReconcileUsage
from resync.workflow import ResyncSubscriptions
from starter import queries, visibility
from starter.follow import workflow_type
from starter.kit import Unreachable, console, database, err, moment, read, run, run_link, temporal
from starter.schedule_commands import describe_schedules, print_schedules
from webhooks.replay_workflow import ReplayWebhooks

# The workflows `status` lists while they run.
OUR_WORKFLOWS = [workflow_type(w) for w in (ReconcileUsage, CatchUpBackfill, ReplayWebhooks, ResyncSubscriptions,
                                            RepairCredits, DailyChecks)]
JSON_HELP = "Print one JSON document instead of tables"

# ---------------------------------------------------------------------------- status


async def gather_status() -> dict[str, Any]:
    async with database() as conn:
        ah = await queries.autoheal(conn)
        last = await queries.last_successful_apply(conn)
        latest_run = await queries.latest_finished_run(conn)
        open_discrepancies = await queries.open_discrepancies(conn, latest_run) if latest_run else 0
        inbox = await queries.inbox_counts(conn)
        oldest_received = await queries.oldest_waiting_event(conn)
        daily_checks = await checks_store.last_results(conn)
        circuit = await queries.stripe_circuit(conn)
        notifications = await queries.notification_counts(conn)
    now = datetime.now(UTC)
    status: dict[str, Any] = {
        "autoheal": {"paused": bool(ah and ah["paused"]), "since": ah["since"] if ah else None,
                     "actor": ah["actor"] if ah else None, "reason": ah["reason"] if ah else None},
        "last_successful_reconciliation": None,
        "open_discrepancies": open_discrepancies, "open_discrepancies_run": latest_run,
        "inbox": {"received": inbox.get("received", 0), "failed": inbox.get("failed", 0),
                  "processed": inbox.get("processed", 0), "ignored": inbox.get("ignored", 0),
                  "oldest_received_age_seconds": (now - oldest_received).total_seconds() if oldest_received else None},
        "schedules": [], "running": [], "temporal": "ok", "awaiting_approval": None,
        "daily_checks": [{"check": r["check_name"], "passed": r["passed"], "summary": r["summary"],
                          "run_id": r["run_id"], "finished_at": r["finished_at"]} for r in daily_checks],
        "stripe_circuit": {"state": circuit["state"] if circuit else "closed",
                           "since": circuit["since"] if circuit else None,
                           "reason": circuit["reason"] if circuit else None},
        "notifications": {"pending": notifications.get("pending", 0), "failed": notifications.get("failed", 0)},
    }
    if last is not None:
        status["last_successful_reconciliation"] = {
            "run_id": last["run_id"], "window": [str(last["window_start"]), str(last["window_end"])],
            "finished_at": last["finished_at"], "age_seconds": (now - last["finished_at"]).total_seconds(),
            "link": run_link(last["run_id"], last["workflow_run_id"])}
    try:
        client = await temporal()
        status["schedules"] = await describe_schedules(client)
        status["running"] = await running_workflows(client)
        status["awaiting_approval"] = await visibility.count_awaiting_approval(client)
    except Unreachable as e:
        status["temporal"] = f"unreachable: {e.__cause__}"
    except RPCError as e:
        status["temporal"] = f"unreachable: {e.message}"
    return status


async def running_workflows(client: Client) -> list[dict[str, Any]]:
    types = " OR ".join(f"WorkflowType = '{t}'" for t in OUR_WORKFLOWS)
    out: list[dict[str, Any]] = []
    async for wf in client.list_workflows(f"ExecutionStatus = 'Running' AND ({types})", limit=50):
        row: dict[str, Any] = {"workflow_id": wf.id, "type": wf.workflow_type, "started": wf.start_time,
                               "link": run_link(wf.id, wf.run_id)}
        try:
            if wf.workflow_type == workflow_type(ReconcileUsage):
                p = await client.get_workflow_handle(wf.id, run_id=wf.run_id).query(
                    ReconcileUsage.progress)
                if p is not None:
                    row["progress"] = f"{p.phase.value}{' (paused)' if p.paused else ''}: " \
                                      f"{p.customers_scanned} customers, {p.counts.drift_count} drift"
            elif wf.workflow_type == workflow_type(CatchUpBackfill):
                b = await client.get_workflow_handle(wf.id, run_id=wf.run_id).query(
                    CatchUpBackfill.progress)
                row["progress"] = f"{b.phase}: {b.days_done}/{b.days_total} days, {len(b.days_failed)} failed"
        except RPCError:
            pass
        out.append(row)
    return out


def status(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Paused or not, schedules, running workflows with progress, last successful
    reconciliation and its age, open discrepancies, webhook inbox backlog."""
    data = run(gather_status())
    if as_json:
        print(json.dumps(data, default=str))
        return
    a = data["autoheal"]
    if a["paused"]:
        console.print(f"auto-healing [bold red]PAUSED[/bold red] since {a['since']:%Y-%m-%d %H:%M} UTC by "
                      f"{a['actor']}: {a['reason']}")
    else:
        console.print("auto-healing [green]active[/green]")
    c = data["stripe_circuit"]
    if c["state"] == "closed":
        console.print("Stripe circuit [green]closed[/green]")
    else:
        console.print(f"Stripe circuit [bold red]{c['state'].upper().replace('_', '-')}[/bold red] since "
                      f"{c['since']:%Y-%m-%d %H:%M:%S} UTC: {c['reason']}")
    n = data["notifications"]
    if n["pending"] or n["failed"]:
        console.print(f"notifications: {n['pending']} pending, [red]{n['failed']} failed[/red]")
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
    _print_daily_checks(data["daily_checks"])
    if data["temporal"] != "ok":
        err.print(f"[red]Temporal {data['temporal']}[/red]")
        return
    if data["awaiting_approval"]:
        console.print(f"[yellow]awaiting approval: {data['awaiting_approval']} run(s)[/yellow] "
                      "(billing-recon runs --outcome awaiting_approval)")
    print_schedules(data["schedules"])
    t = Table(title="running workflows")
    for col in ("workflow", "type", "progress", "link"):
        t.add_column(col, overflow="fold")
    for r in data["running"]:
        t.add_row(r["workflow_id"], r["type"], r.get("progress", ""), r["link"] or "")
    console.print(t)


def _print_daily_checks(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("daily checks: [yellow]never run[/yellow] (billing-recon checks)")
        return
    failed = [r["check"] for r in rows if not r["passed"]]
    last = max(r["finished_at"] for r in rows)
    verdict = f"[red]failing: {', '.join(failed)}[/red]" if failed else "[green]all passed[/green]"
    console.print(f"daily checks ({last:%Y-%m-%d %H:%M} UTC): {verdict}")


# ---------------------------------------------------------------------------- audit


def audit(customer: str | None = typer.Option(None, help="Only writes that touched this customer"),
          since: datetime | None = typer.Option(None, parser=moment, help="2026-11-01, 2026-11-01T12:00:00Z or 3d/12h"),
          action: str | None = typer.Option(None, help="Only this action (e.g. credits.grant)"),
          limit: int = typer.Option(200, min=1, max=100_000, help="How many, newest first"),
          as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
          workflow_id: str | None = typer.Option(None, help="Only writes of this workflow (run id of `runs`)"),
          kind: str | None = typer.Option(None, help=visibility.KIND_HELP),
          outcome: ui.Outcome | None = typer.Option(None, help=visibility.OUTCOME_HELP)) -> None:
    """Every corrective action: who, why, before/after, and a link to its workflow run.
    --kind/--outcome: only writes of the runs Temporal's visibility API finds by those search
    attributes (the newest 1000 such runs)."""
    workflow_ids = [workflow_id] if workflow_id else None
    query = visibility.visibility_query(kind=kind, outcome=outcome)
    if query is not None:
        found = {r["workflow_id"] for r in run(visibility.find_runs(query, visibility.MAX_AUDIT_RUNS))}
        workflow_ids = sorted(found & set(workflow_ids) if workflow_ids else found)
    rows = [{**r, "link": run_link(r["workflow_id"], r["run_id"])}
            for r in read(queries.audit, customer=customer, since=since, action=action, limit=limit,
                          workflow_ids=workflow_ids)]
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


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("audit")(audit)
