"""`readback status`: where the rolling read-back's cycle stands (readback/, docs/reconciliation.md
"Three paths"). Slices are started by the `usage-readback` schedule; one can be run now with
`billing-recon schedules trigger usage-readback`.

Exit codes: 0 ok; 1 Postgres did not answer (or the tables are missing: run `migrate`)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from readback.status import read_status
from starter.kit import console, database, run

readback_app = typer.Typer(no_args_is_help=True)


@readback_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="One JSON object")) -> None:
    """The current cycle (customers read, slices behind pace, failed or waiting for an approval),
    the last slices and the last completed cycles."""

    async def go() -> dict[str, Any]:
        async with database() as conn:
            return await read_status(conn)

    view = run(go())
    if as_json:
        print(json.dumps(view))
        return
    c = view["cycle"]
    if c is None:
        console.print(f"No read-back slice has run yet ({view['customers']} customers to read).")
    else:
        console.print(
            f"Cycle {c['cycle']} since {c['started_at']}: {c['customers_claimed']} of {view['customers']} customers "
            f"claimed by {c['slices']} slice(s); behind pace: {c['slices_behind_pace']}, failed: {c['slices_failed']}, "
            f"awaiting approval: {c['slices_awaiting_approval']}", soft_wrap=True)
    table = Table(title="Last slices")
    for col in ("cycle", "slice", "customers", "after", "through", "on pace", "status", "run", "run status"):
        table.add_column(col)
    for s in view["slices"]:
        table.add_row(str(s["cycle"]), str(s["slice"]), str(s["customers"]), s["after"] or "(start)",
                      s["through"] or "(end)", "yes" if s["on_pace"] else "NO", s["status"], s["run_id"],
                      s["run_status"] or "")
    console.print(table)
    done = Table(title="Completed cycles")
    for col in ("cycle", "started", "finished", "hours", "slices", "customers", "failed slices"):
        done.add_column(col)
    for r in view["cycles"]:
        done.add_row(str(r["cycle"]), r["started_at"], r["finished_at"], str(r["hours"]), str(r["slices"]),
                     str(r["customers"]), str(r["failed_slices"]))
    console.print(done)


def register(root: typer.Typer) -> None:
    root.add_typer(readback_app, name="readback", help="The rolling read-back of usage against Stripe.")
