"""`notifications`: what operators were told (the outbox, newest first), and `notifications
retry` of failed ones once their target is fixed. docs/notifications.md."""

from __future__ import annotations

import json
from enum import StrEnum

import typer
from rich.table import Table

from notify.outbox import retry_failed
from starter import queries
from starter.kit import console, database, fail, read, run

app = typer.Typer()


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    NO_TARGET = "no_target"


@app.callback(invoke_without_command=True)
def notifications(
    ctx: typer.Context,
    status: OutboxStatus | None = typer.Option(None, help="Only notifications in this status"),
    limit: int = typer.Option(50, min=1, max=10_000, help="How many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON array instead of a table"),
) -> None:
    """Notifications recorded for delivery: kind, subject, status, targets reached, last error
    (`notifications retry`: send failed ones again)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = read(queries.notifications, status=status.value if status else None, limit=limit)
    if as_json:
        print(json.dumps(rows, default=str))
        return
    counts = read(queries.notification_counts)
    console.print("notifications: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"))
    t = Table()
    for col in ("created (UTC)", "kind", "subject", "status", "attempts", "delivered to", "title / error"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(f"{r['created_at']:%Y-%m-%d %H:%M:%S}", r["kind"], r["subject"], r["status"], str(r["attempts"]),
                  ", ".join(sorted(r["delivered"] or {})), r["last_error"] or r["title"] or "")
    console.print(t)


@app.command("retry")
def retry(key: str | None = typer.Argument(None, metavar="KEY", help="One notification (subject|kind); none: all failed")) -> None:
    """Send failed notifications again (after fixing the target's URL or key)."""
    async def go() -> int:
        async with database() as conn:
            return await retry_failed(conn, key)

    n = run(go())
    if key and not n:
        raise fail(f"no failed notification {key}")
    console.print(f"{n} notification(s) queued again" if n else "no failed notification; nothing changed")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="notifications")
