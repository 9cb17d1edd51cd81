"""Which Postgres a process uses: `DATABASE_URL`, else the database the local stack serves.

Production sets `DATABASE_URL`. On a developer's machine it may be unset: then the database is
the one `billing-recon dev up` serves, found through one documented file, so that production code
never imports the dev stack (`devstack/`):

    <BILLING_STATE_DIR>/stack.json   (default ./.state/stack.json)
    {"database_url": "postgresql://...", ...}

`dev up` writes the top-level `database_url` as soon as its database is ready; `dev down` clears
it. Nothing else in that file is read here. A unix-socket URL (the embedded Postgres) whose
socket is gone counts as no database: the server was stopped behind the stack's back.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from billing.settings import Settings, get_settings

STACK_FILE = "stack.json"
DATABASE_URL_KEY = "database_url"
DEFAULT_POSTGRES_PORT = 5432


class DatabaseNotConfigured(RuntimeError):
    """Neither DATABASE_URL nor a running local stack names a database; the message says what to do."""


def stack_file(settings: Settings) -> Path:
    """The local stack's state file (the one place `resolve_database_url` looks)."""
    return settings.state_dir.expanduser().resolve() / STACK_FILE


def unix_socket_path(url: str) -> Path | None:
    """The socket file a unix-socket Postgres URL (`...?host=/dir`) connects to; None for TCP."""
    parts = urllib.parse.urlsplit(url)
    host = urllib.parse.parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    if not host.startswith("/"):
        return None
    return Path(host) / f".s.PGSQL.{parts.port or DEFAULT_POSTGRES_PORT}"


def recorded_database_url(path: Path) -> str | None:
    """The `database_url` the local stack recorded in `path`, if any (unreadable file: None)."""
    try:
        recorded = json.loads(path.read_text()).get(DATABASE_URL_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) and recorded else None


def resolve_database_url(settings: Settings | None = None) -> str:
    """DATABASE_URL when set; else the database the local stack records in its state file.

    Every process (CLI, worker, receiver) gets its database here. Raises DatabaseNotConfigured
    saying what to do."""
    s = settings or get_settings()
    if s.database_url:
        return s.database_url
    path = stack_file(s)
    url = recorded_database_url(path)
    socket = unix_socket_path(url) if url else None
    if url is None or (socket is not None and not socket.exists()):
        if not path.exists():
            reason = "does not exist"
        elif url is None:
            reason = "names no database (the stack is down)"
        else:
            reason = f"names a database whose socket {socket} is gone"
        raise DatabaseNotConfigured(
            f"No database: DATABASE_URL is not set and the local stack's state file {path} "
            f"{reason}. Run `billing-recon dev up` (or set DATABASE_URL)."
        )
    return url
