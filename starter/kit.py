"""The CLI's shared kit: consoles, errors and exit codes, input validation, the database and
Temporal connections, and small things every command uses (workflow ids, actors, links, count
tables). Starting and following workflows: `starter.follow`. Command modules import from here
and from `starter.follow`, never each other's privates."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.client import Client
from temporalio.service import RPCError

from billing import db
from billing.settings import get_settings
from common.client import connect, connect_config
from common.paged import ErrorType
from common.types import Mode
from reconcile.types import Permanent
from webhooks.types import EVENT_NOT_DISMISSABLE

T = TypeVar("T")
Q = ParamSpec("Q")

# ---------------------------------------------------------------------------- consoles

# Piped or in CI there is no terminal width; rich would assume 80 and fold every table.
_WIDTH = None if sys.stdout.isatty() else 130
console = Console(width=_WIDTH)
# Errors are one line whatever the terminal: never folded at the console width.
err = Console(stderr=True, width=_WIDTH, soft_wrap=True)

# ---------------------------------------------------------------------------- exit codes
# The one table (README "Exit codes"); `dev status` adds 3 (nothing recorded).

EXIT_OK = 0
# The run failed or found what it could not fix (failed days, events or fixes, a refused debit),
# an input file had invalid lines, something asked for does not exist, Temporal or Postgres
# did not answer.
EXIT_FAILED = 1
# Bad input: refused before anything was started or written (usage, out-of-range values, blank
# actor or reason, a folder that does not exist), or refused by the workflow for the same reason.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# Workflow failures that are the caller's input, not the run: exit 2 like any bad argument.
BAD_INPUT_FAILURES = frozenset({
    Permanent.INVALID_WINDOW, Permanent.UNKNOWN_CUSTOMER, Permanent.UNKNOWN_METER,
    Permanent.UNSUPPORTED_METER,  # a count/last meter named with --meter
    ErrorType.UNKNOWN_CUSTOMER.value, ErrorType.IDEMPOTENCY_KEY_REUSED.value, EVENT_NOT_DISMISSABLE,
    "ValidationError",  # the workflow's input model refused it (`failure_exception_types`)
})


def one_line(message: str) -> str:
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print `error: <message>` on stderr, as one line; return the Exit to raise."""
    err.print(f"[red]error:[/red] {escape(one_line(message))}")
    return typer.Exit(code)


def usage_error(e: typer.TyperException) -> int:
    """A refusal of the command line itself (usage, a value out of range, a parser's or a
    callback's BadParameter), printed like every other error."""
    ctx = getattr(e, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    fail(e.format_message().rstrip(".") + hint)
    return e.exit_code


class Unreachable(Exception):
    """Temporal or Postgres did not answer (see `temporal()`, `database()`)."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async part. What Temporal or Postgres refuse, or not answering, is one
    red line and exit 1."""
    try:
        return asyncio.run(coro)
    except Unreachable as e:
        raise fail(str(e)) from e
    except RPCError as e:
        raise fail(f"Temporal: {e.message}") from e
    except asyncpg.PostgresError as e:
        raise fail(f"Postgres: {e}") from e
    except ConnectionError as e:  # e.g. `migrate` against a database that is not there
        raise fail(f"cannot connect: {e}") from e


async def temporal(address: str | None = None) -> Client:
    try:
        return await connect(address)
    except RuntimeError as e:  # the SDK's "Failed client connect: ..."
        target = address or connect_config().get("target_host")
        raise Unreachable(f"Temporal at {target} did not answer: {e}") from e


def database_url() -> str:
    """DATABASE_URL, else the local stack's database (billing.database_url)."""
    from billing.database_url import resolve_database_url

    return resolve_database_url(get_settings())


@asynccontextmanager
async def database(dsn: str | None = None) -> AsyncIterator[asyncpg.Connection]:
    """One connection for one command, closed afterwards."""
    try:
        conn = await db.connect(dsn or database_url())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise Unreachable(f"Postgres did not answer: {e}") from e
    try:
        yield conn
    finally:
        await conn.close()


def read(query: Callable[Concatenate[asyncpg.Connection, Q], Awaitable[T]], *args: Q.args, **kwargs: Q.kwargs) -> T:
    """One read of `starter.queries` (`read(queries.runs, open_only=True, limit=20)`) on a
    connection of its own."""

    async def go() -> T:
        async with database() as conn:
            return await query(conn, *args, **kwargs)

    return run(go())


# ---------------------------------------------------------------------------- input


def not_blank(value: str | None) -> str | None:
    """Typer callback: an option that is given must say something (an audited actor, a reason)."""
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be blank")
    return value


def new_file(path: Path | None) -> Path | None:
    """Typer callback: a file the command writes: not a folder, in a folder that exists."""
    if path is not None:
        if path.is_dir():
            raise typer.BadParameter(f"{path} is a folder")
        if not path.parent.is_dir():
            raise typer.BadParameter(f"folder {path.parent} does not exist")
    return path


_RELATIVE = re.compile(r"^(\d+)([dhm])$")


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """`2026-11-01`, `2026-11-01T12:00:00Z` (no zone = UTC) or relative to now: `3d`, `12h`, `30m`."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(value.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        return now - {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a time: use 2026-11-01, 2026-11-01T12:00:00Z or 3d/12h/30m") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def day(value: str | date) -> date:
    """Typer parser (`typer.Option(..., parser=day)`): a UTC day, YYYY-MM-DD."""
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a day: use YYYY-MM-DD") from None


def moment(value: str | datetime) -> datetime:
    """Typer parser (`typer.Option(..., parser=moment)`): a time as `parse_time` reads it."""
    if isinstance(value, datetime):
        return value
    try:
        return parse_time(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **fields: Any) -> M:
    """A workflow input from a command's arguments; what the model refuses is bad input."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(
            (".".join(map(str, x["loc"])) + ": " if x["loc"] else "") + x["msg"].removeprefix("Value error, ")
            for x in e.errors())
        raise fail(f"invalid arguments: {problems}", EXIT_BAD_INPUT) from e


def choose_mode(*, dry_run: bool, apply: bool, plan: bool | None = None) -> Mode:
    """The one mode flag given (default dry-run); two of them are bad input."""
    flags = {"--dry-run": dry_run, "--apply": apply}
    if plan is not None:
        flags["--plan"] = plan
    if sum(flags.values()) > 1:
        raise fail(f"choose one of {', '.join(flags)}", EXIT_BAD_INPUT)
    return Mode.APPLY if apply else Mode.PLAN if plan else Mode.DRY_RUN


def new_id(*parts: str) -> str:
    """A generated workflow id: `reconcile-usage-apply-3f2a...` (the parts, then 12 hex)."""
    return "-".join([*parts, uuid.uuid4().hex[:12]])


def default_actor() -> str:
    return get_settings().actor()


def run_link(workflow_id: str | None, run_id: str | None = None) -> str | None:
    if not workflow_id:
        return None
    ns = connect_config().get("namespace") or "default"
    tail = f"/{run_id}" if run_id else ""
    return f"{get_settings().ui_url()}/namespaces/{ns}/workflows/{workflow_id}{tail}/history"


def counts_table(title: str, counts: BaseModel, *, skip_zero: bool = False) -> Table:
    """A result's counts, one row each (dicts joined, lists left out; zeros too with `skip_zero`)."""
    t = Table(title=title)
    t.add_column("count")
    t.add_column("value", justify="right")
    for name, value in counts.model_dump().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list) or (skip_zero and not value):
            continue
        t.add_row(name, str(value))
    return t
