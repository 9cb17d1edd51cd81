"""`billing-recon console`: the operator console (console/, docs/console.md) on CONSOLE_HOST:
CONSOLE_PORT (127.0.0.1:8090 unless configured)."""

from __future__ import annotations

import typer

from billing.settings import get_settings
from console.settings import get_console_settings
from starter.kit import EXIT_BAD_INPUT, database_url, fail


def console(host: str | None = typer.Option(None, help="Default CONSOLE_HOST (127.0.0.1)"),
            port: int | None = typer.Option(None, min=1, max=65535, help="Default CONSOLE_PORT (8090)")) -> None:
    """Serve the operator console: overview, runs and approvals, customers, audit log, reports."""
    from common.client import exit_skipping_finalization
    from console.app import serve

    settings = get_console_settings().model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v})
    problem = settings.startup_problem()
    if problem:
        raise fail(problem, EXIT_BAD_INPUT)
    get_settings()  # invalid billing settings stop here with their one line
    serve(settings, database_url())
    exit_skipping_finalization(0)


def register(app: typer.Typer) -> None:
    app.command("console")(console)
