"""`billing-recon dev`: the local stack on embedded defaults (thin layer over `devstack`).

`devstack` is imported inside the commands: the CLI mounts this group for every command, and
production commands must not load the dev stack."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from devstack import StackInfo

app = typer.Typer(no_args_is_help=True, help="Local stack on embedded defaults.")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error, never folded

# `dev status` exit codes: 0 all recorded components run, 1 one is dead, 3 nothing recorded.
EXIT_DEAD = 1
EXIT_NOT_RUNNING = 3


def _say(message: str) -> None:
    err_console.print(f"[dim]{message}[/dim]")


def _print_addresses(info: StackInfo) -> None:
    # Plain lines, never wrapped or truncated: people copy these.
    for label, address in info.address_lines():
        typer.echo(f"{label:<16} {address}")


@app.command()
def up(
    worker: bool = typer.Option(True, "--worker/--no-worker", help="Also start the worker."),
) -> None:
    """Start Temporal, Postgres (unless DATABASE_URL is set), the Stripe emulator and the worker.
    Safe to run twice: what already runs is left alone."""
    import devstack as stack

    try:
        info = stack.up(worker=worker, log=_say)
    except stack.StackError as exc:
        err_console.print(f"[red]dev up failed:[/red] {exc}")
        err_console.print("Components started so far keep running; `billing-recon dev down`.")
        raise typer.Exit(1) from exc
    _print_addresses(info)
    console.print('Run [bold]eval "$(billing-recon dev env)"[/bold] to use it from this shell.')


@app.command()
def down(
    purge: bool = typer.Option(False, "--purge", help="Also delete the state folder (all data)."),
) -> None:
    """Stop what `dev up` started. Data stays unless --purge."""
    import devstack as stack

    try:
        stack.down(purge=purge, log=_say)
    except stack.StackError as exc:
        err_console.print(f"[red]dev down failed:[/red] {exc}")
        raise typer.Exit(1) from exc


_STATE_STYLE = {"running": "green", "dead": "bold red", "stopped": "dim", "external": "cyan"}


@app.command()
def status() -> None:
    """Show what runs. Exit code 1 if a recorded component is dead, 3 if nothing is recorded."""
    import devstack as stack

    result = stack.status()
    table = Table(title=f"Local stack ({result.state_dir})")
    for column in ("component", "state", "pid", "address", "log / detail"):
        table.add_column(column, overflow="fold")
    for c in result.components:
        style = _STATE_STYLE.get(c.state, "")
        table.add_row(
            c.name,
            f"[{style}]{c.state}[/{style}]" if style else c.state,
            str(c.pid or ""),
            c.address or "",
            c.detail or (str(c.log) if c.log else ""),
        )
    console.print(table)
    if result.dead:
        names = ", ".join(c.name for c in result.dead)
        err_console.print(
            f"[red]dead: {names}[/red] (see their logs; `billing-recon dev up` restarts)"
        )
        raise typer.Exit(EXIT_DEAD)
    if not result.recorded:
        raise typer.Exit(EXIT_NOT_RUNNING)


@app.command()
def env() -> None:
    """Print `export ...` lines for the running stack: eval "$(billing-recon dev env)"."""
    import devstack as stack

    try:
        info = stack.info()
    except stack.StackNotRunning as exc:
        err_console.print(str(exc))
        raise typer.Exit(1) from exc
    for key, value in info.env().items():
        typer.echo(f"export {key}={shlex.quote(value)}")
