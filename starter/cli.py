"""`billing-recon`: the operator's CLI. It starts workflows and reads results; it never imports
the worker. Sub-command groups live in their own modules and are mounted here."""

from __future__ import annotations

import os
import sys
import traceback

import typer

app = typer.Typer(
    name="billing-recon",
    help="Billing reconciliation between Postgres and Stripe, on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _mount() -> None:
    # Imported here so that `billing-recon --help` stays fast and modules stay independent.
    from starter import commands, dev, ops_commands, resync_commands, webhook_commands
    from stripe_emulator import cli as emulator_cli

    app.add_typer(dev.app, name="dev", help="Local stack on embedded defaults.")
    commands.register(app)
    webhook_commands.register(app)
    ops_commands.register(app)
    resync_commands.register(app)
    app.command("stripe-emulator", help="Run the local Stripe emulator.")(emulator_cli.run)
    app.add_typer(__import__("allocations.cli", fromlist=["app"]).app, name="allocations")


SERVER_COMMANDS = {"worker", "webhooks", "stripe-emulator", "dev"}


def main() -> None:
    from billing import correlation

    # One correlation id per command: every workflow, activity and audit row it causes carries
    # it (BILLING_CORRELATION_ID passes a caller's own).
    correlation.set_current(os.environ.get(correlation.ENV_VAR) or correlation.new_id())
    from billing import telemetry

    # Spans of the client side (StartWorkflow, SignalWorkflow, ...) when OTLP is configured.
    # Long-running processes set up their own telemetry (`billing.telemetry.init_process`).
    if not set(sys.argv[1:2]) & SERVER_COMMANDS:
        telemetry.configure_tracing("billing-recon-cli")
    _mount()
    code: int = 0
    try:
        app()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = e.code or 0
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    from common.client import exit_skipping_finalization

    telemetry.shutdown_tracing()  # flush: the exit below skips interpreter finalization
    exit_skipping_finalization(code)
