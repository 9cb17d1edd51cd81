"""``billing-recon stripe-emulator`` / ``python -m stripe_emulator``."""

from __future__ import annotations

import typer
import uvicorn

from .app import create_app
from .state import Config


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
) -> None:
    """Serve the local Stripe emulator (blocking)."""
    config = Config(
        rate_limit=rate_limit,
        summary_lag_seconds=summary_lag_seconds,
        seed=seed,
        webhook_secret=webhook_secret or None,
    )
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, access_log=False)


def main() -> None:
    typer.run(run)
