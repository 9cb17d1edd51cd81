"""`billing-recon`: the operator's CLI. It starts workflows and reads results; it never imports
the worker. Each job's commands live in their own module (`starter/<job>_commands.py`) on the
shared kit (`starter/kit.py`; workflows are started and followed by `starter/follow.py`, read
queries are in `starter/queries.py`), and are mounted on this one Typer app.

Exit codes, the same for every command (`starter.kit`): 0 ok; 1 the run failed or found what
it could not fix, a file had invalid lines, not found, Temporal or Postgres did not answer;
2 bad input (refused before anything is started or written, or refused by the workflow for
the same reason); 3 `dev status` with nothing recorded; 130 interrupted."""

from __future__ import annotations

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
    from starter import (
        allocations_commands,
        autoheal_commands,
        backfill_commands,
        budget_commands,
        checks_commands,
        console_commands,
        credits_commands,
        customer_commands,
        demo,
        dev,
        incident_commands,
        notify_commands,
        readback_commands,
        reconcile_commands,
        resync_commands,
        revenue_commands,
        schedule_commands,
        setup_commands,
        status_commands,
        visibility,
        webhook_commands,
    )
    from stripe_emulator import cli as emulator_cli

    app.add_typer(dev.app, name="dev", help="Local stack on embedded defaults.")
    setup_commands.register(app)
    reconcile_commands.register(app)
    app.command("demo")(demo.demo)
    webhook_commands.register(app)
    autoheal_commands.register(app)
    backfill_commands.register(app)
    schedule_commands.register(app)
    status_commands.register(app)
    resync_commands.register(app)
    credits_commands.register(app)
    app.command("stripe-emulator", help="Run the local Stripe emulator.")(emulator_cli.run)
    allocations_commands.register(app)
    customer_commands.register(app)
    revenue_commands.register(app)
    checks_commands.register(app)
    incident_commands.register(app)
    budget_commands.register(app)
    readback_commands.register(app)
    visibility.register(app)
    notify_commands.register(app)
    console_commands.register(app)


SERVER_COMMANDS = {"worker", "webhooks", "stripe-emulator", "dev", "console"}


def main() -> None:
    from billing import correlation

    # One correlation id per command: every workflow, activity and audit row it causes carries
    # it (BILLING_CORRELATION_ID passes a caller's own).
    from billing.settings import get_settings

    correlation.set_current(get_settings().correlation_id or correlation.new_id())
    from billing import telemetry

    # Spans of the client side (StartWorkflow, SignalWorkflow, ...) when OTLP is configured.
    # Long-running processes set up their own telemetry (`billing.telemetry.init_process`).
    if not set(sys.argv[1:2]) & SERVER_COMMANDS:
        telemetry.configure_tracing("billing-recon-cli")
    _mount()
    code = _invoke()
    from common.client import exit_skipping_finalization

    telemetry.shutdown_tracing()  # flush: the exit below skips interpreter finalization
    exit_skipping_finalization(code)


def _invoke() -> int:
    """Run the command; its exit code. Typer's own refusals (usage, out-of-range values, a
    callback's or parser's BadParameter) are printed like every other error: one line on
    stderr, exit 2."""
    from billing.database_url import DatabaseNotConfigured
    from starter.kit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, usage_error

    try:
        rv = app(standalone_mode=False)
    except typer.TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed (typer checks it so too)
            return e.exit_code
        return usage_error(e)
    except typer.Abort:
        return EXIT_FAILED
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return EXIT_FAILED
        return e.code or EXIT_OK
    except DatabaseNotConfigured as e:
        print(f"error: {e}", file=sys.stderr)  # what to do, without a traceback
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException:
        traceback.print_exc()
        return EXIT_FAILED
    # Without standalone mode, click returns a command's exit code (typer.Exit) or its value.
    return rv if isinstance(rv, int) else EXIT_OK
