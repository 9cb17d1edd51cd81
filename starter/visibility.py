"""Finding runs through Temporal's visibility API by our search attributes (common/ui.py):
the filters of `runs` and `audit`, and `temporal setup`, which registers the attributes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import typer
from rich.table import Table
from temporalio.client import Client, WorkflowExecution
from temporalio.service import RPCError, RPCStatusCode

from common import ui
from common.types import Mode
from common.ui_setup import SearchAttributeConflict, register_search_attributes, tcld_command
from starter.kit import EXIT_BAD_INPUT, console, fail, run, run_link, temporal

# What a filter value may hold: ids as we write them (no quotes, so a query cannot be broken).
_VALUE = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,200}$")
# `audit --kind/--outcome` looks at the writes of at most this many matching runs (newest first).
MAX_AUDIT_RUNS = 1000
KIND_HELP = "Only runs of this kind (BillingRunKind: reconcile-usage, catch-up-backfill, ...)"
OUTCOME_HELP = "Only runs with this outcome (BillingOutcome)"


def _value(option: str, value: str) -> str:
    if not _VALUE.match(value):
        raise fail(f"{option} {value!r}: use letters, digits and _.:@/+- only", EXIT_BAD_INPUT)
    return value


def visibility_query(*, kind: str | None = None, mode: Mode | None = None, outcome: ui.Outcome | None = None,
                     customer: str | None = None, correlation_id: str | None = None, schedule: str | None = None,
                     open_only: bool = False) -> str | None:
    """The list filter of the given options (None when none is given)."""
    terms = []
    for key, option, value in ((ui.RUN_KIND, "--kind", kind), (ui.MODE, "--mode", mode and mode.value),
                               (ui.OUTCOME, "--outcome", outcome and outcome.value),
                               (ui.CUSTOMER_IDS, "--customer", customer),
                               (ui.CORRELATION_ID, "--correlation-id", correlation_id)):
        if value is not None:
            terms.append(f"{key.name} = '{_value(option, value)}'")
    if schedule is not None:
        name = _value("--schedule", schedule)
        terms.append(f"{ui.SCHEDULED_BY.name} = '{name if name.startswith('billing-') else 'billing-' + name}'")
    if not terms:
        return None
    if open_only:
        terms.append("ExecutionStatus = 'Running'")
    return " AND ".join(terms)


def row(wf: WorkflowExecution) -> dict[str, Any]:
    sa = wf.typed_search_attributes
    return {"workflow_id": wf.id, "run_id": wf.run_id, "type": wf.workflow_type,
            "kind": sa.get(ui.RUN_KIND), "mode": sa.get(ui.MODE), "outcome": sa.get(ui.OUTCOME),
            "customers": list(sa.get(ui.CUSTOMER_IDS) or []), "correlation_id": sa.get(ui.CORRELATION_ID),
            "schedule": sa.get(ui.SCHEDULED_BY), "status": wf.status.name.lower() if wf.status else None,
            "started": wf.start_time, "closed": wf.close_time, "link": run_link(wf.id, wf.run_id)}


async def find_runs(query: str, limit: int, client: Client | None = None) -> list[dict[str, Any]]:
    """Newest first. A query naming an attribute the namespace lacks: one line, exit 1."""
    client = client or await temporal()
    try:
        return [row(wf) async for wf in client.list_workflows(query, limit=limit)]
    except RPCError as e:
        if e.status == RPCStatusCode.INVALID_ARGUMENT:
            raise fail(f"Temporal refused the filter ({e.message}); are the search attributes registered? "
                       "run `billing-recon temporal setup`") from None
        raise


async def count_awaiting_approval(client: Client) -> int | None:
    """Running runs whose plan (or held over-reporting) waits for a human; None where the
    namespace lacks our search attributes."""
    query = f"{ui.OUTCOME.name} = '{ui.Outcome.AWAITING_APPROVAL.value}' AND ExecutionStatus = 'Running'"
    try:
        return (await client.count_workflows(query)).count
    except RPCError as e:
        if e.status == RPCStatusCode.INVALID_ARGUMENT:
            return None
        raise


def print_runs(rows: list[dict[str, Any]], query: str, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, default=str))
        return
    t = Table(title=f"{len(rows)} runs where {query}")
    for col in ("workflow", "kind", "mode", "outcome", "status", "customers", "started (UTC)", "link"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["workflow_id"], r["kind"] or "", r["mode"] or "", r["outcome"] or "", r["status"] or "",
                  ", ".join(r["customers"]), _at(r["started"]), r["link"] or "")
    console.print(t)


def _at(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else ""


# ---------------------------------------------------------------------------- temporal setup

temporal_app = typer.Typer(no_args_is_help=True)


@temporal_app.command("setup")
def setup(namespace: str | None = typer.Option(
        None, help="Namespace (default: TEMPORAL_NAMESPACE / the profile's, else `default`)")) -> None:
    """Register billing-recon's custom search attributes in the namespace (idempotent). Temporal
    Cloud: use the tcld command this prints when the cluster refuses."""

    async def go() -> None:
        client = await temporal()
        ns = namespace or client.namespace
        try:
            done = await register_search_attributes(client, ns)
        except SearchAttributeConflict as e:
            raise fail(str(e)) from None
        except RPCError as e:
            if e.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
                raise fail(f"Temporal refused to register search attributes ({e.message}); on Temporal Cloud "
                           f"run: {tcld_command(ns)}") from None
            raise
        for name in done.added:
            console.print(f"added {name}")
        for name in done.existing:
            console.print(f"already registered: {name}")
        console.print(f"namespace {ns}: search attributes ready")

    run(go())


def register(app: typer.Typer) -> None:
    app.add_typer(temporal_app, name="temporal", help="Set up a Temporal namespace for billing-recon.")
