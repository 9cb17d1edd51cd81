"""`billing-recon`: the operator's CLI. It starts workflows and reads results; it never imports
the worker. Sub-command groups live in their own modules and are mounted here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="billing-recon",
    help="Billing reconciliation between Postgres and Stripe, on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _mount() -> None:
    # Imported here so that `billing-recon --help` stays fast and modules stay independent.
    from starter import commands, dev
    from stripe_emulator import cli as emulator_cli

    app.add_typer(dev.app, name="dev", help="Local stack on embedded defaults.")
    commands.register(app)
    app.command("stripe-emulator", help="Run the local Stripe emulator.")(emulator_cli.run)


def main() -> None:
    _mount()
    app()
