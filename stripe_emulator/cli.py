"""``billing-recon stripe-emulator`` / ``python -m stripe_emulator``."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from .app import create_app
from .config import Config
from .persist import DEFAULT_SAVE_INTERVAL_SECONDS, StateFileError


def run(
    host: str = typer.Option("127.0.0.1", envvar="EMULATOR_HOST", help="Interface to bind."),
    port: int = typer.Option(12111, envvar="EMULATOR_PORT", help="Port to listen on."),
    rate_limit: float = typer.Option(
        25.0,
        envvar="EMULATOR_RATE_LIMIT",
        help="Requests per second (test mode: 25); 0 = unlimited.",
    ),
    summary_lag_seconds: float = typer.Option(
        0.0,
        envvar="EMULATOR_SUMMARY_LAG_SECONDS",
        help="Seconds before a meter event counts in summaries.",
    ),
    seed: int = typer.Option(0, envvar="EMULATOR_SEED", help="Seed for fault injection."),
    webhook_secret: str | None = typer.Option(
        None, envvar="STRIPE_WEBHOOK_SECRET", help="Signing secret given to every webhook endpoint."
    ),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    state_file: Path | None = typer.Option(
        None,
        envvar="EMULATOR_STATE_FILE",
        help="Keep the state in this file: loaded at start if it exists, saved on shutdown, "
        "every --save-interval seconds when changed, and on POST /_emulator/snapshot.",
    ),
    save_interval: float = typer.Option(
        DEFAULT_SAVE_INTERVAL_SECONDS,
        envvar="EMULATOR_SAVE_INTERVAL_SECONDS",
        help="With --state-file: seconds between saves when something changed; 0 = off.",
    ),
    endpoint_rate_limit: float = typer.Option(
        25.0,
        envvar="EMULATOR_ENDPOINT_RATE_LIMIT",
        help="Requests per second per endpoint (Stripe: 25, live mode too); 0 = none. "
        "--rate-limit 0 switches this off too.",
    ),
) -> None:
    """Serve the local Stripe emulator (blocking)."""
    config = Config(
        rate_limit=rate_limit,
        summary_lag_seconds=summary_lag_seconds,
        seed=seed,
        webhook_secret=webhook_secret or None,
        endpoint_rate_limit=endpoint_rate_limit,
    )
    try:
        app = create_app(config, state_file=state_file, save_interval=save_interval)
    except StateFileError as exc:
        typer.echo(f"stripe_emulator: {exc}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def main() -> None:
    typer.run(run)
