"""up / down / status / info: what `billing-recon dev` and `billing-recon demo` call."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from billing.database_url import unix_socket_path
from devstack.components import (
    register_search_attributes,
    register_webhook_endpoint,
    start_emulator,
    start_postgres,
    start_temporal,
    start_webhooks,
    start_worker,
)
from devstack.config import (
    COMPONENTS,
    EMULATOR,
    POSTGRES,
    STATE_ENTRIES,
    STATE_ENTRY_PREFIXES,
    STOP_TIMEOUT_SECONDS,
    TEMPORAL,
    WEBHOOKS,
    WORKER,
    ComponentRecord,
    ComponentStatus,
    StackConfig,
    StackError,
    StackInfo,
    StackNotRunning,
    StackState,
    StackStatus,
    load_state,
    locked,
    save_state,
)
from devstack.postgres import postgres_pid, postgres_url, stop_postgres
from devstack.processes import live_process, port_open, processes_using, run_sync, terminate

Say = Callable[[str], None]


def _config(config: StackConfig | None) -> StackConfig:
    return config if config is not None else StackConfig.from_settings()


def _quiet(_message: str) -> None:
    pass


def is_alive(record: ComponentRecord) -> bool:
    """Our process still runs (same pid and start time) and its port or socket answers."""
    if live_process(record.pid, record.create_time) is None:
        return False
    if record.name == POSTGRES:
        return record.pgdata is not None and postgres_pid(record.pgdata) == record.pid
    if record.name == WORKER:
        return True  # no port: the pid is the signal
    if record.host is not None and record.port is not None:
        return port_open(record.host, record.port)
    return True


def up(config: StackConfig | None = None, *, worker: bool = True, log: Say | None = None) -> StackInfo:
    """Start whatever of the stack is not running yet; return every address.

    Safe to run twice. On failure the components already started stay recorded (so `down`
    stops them) and a `StackError` carries the failing component's log tail."""
    config = _config(config)
    say = log or _quiet
    started: list[str] = []
    with locked(config):
        config.log_dir.mkdir(parents=True, exist_ok=True)
        state = load_state(config.state_dir)

        def ensure(name: str, start: Callable[[], ComponentRecord]) -> ComponentRecord:
            record = state.components.get(name)
            if record is not None and is_alive(record):
                say(f"{name}: already running (pid {record.pid})")
                return record
            if record is not None:
                # Recorded but gone (crashed, or killed): make sure nothing half-alive remains.
                terminate(record.pid, STOP_TIMEOUT_SECONDS, record.create_time)
                state.components.pop(name, None)
            say(f"{name}: starting")
            record = start()
            state.components[name] = record
            started.append(name)
            save_state(config, state)
            say(f"{name}: running (pid {record.pid})")
            return record

        ensure(TEMPORAL, lambda: start_temporal(config))
        registered = run_sync(lambda: register_search_attributes(config.temporal_address))
        say(f"temporal: search attributes {'added: ' + ', '.join(registered.added) if registered.added else 'registered'}")

        exported = config.database_url
        if exported and not owns_database(config, state, exported):
            database_url = exported
            say("postgres: external (DATABASE_URL)")
            _keep_live_embedded(state, say)
        else:
            # No DATABASE_URL, or the one `dev env` exported for our own embedded server.
            database_url = ensure(POSTGRES, lambda: start_postgres(config)).address
            state.embedded_database_url = database_url
            if exported and exported != database_url:
                say(f"postgres: now at {database_url}; DATABASE_URL here is stale: "
                    f'run eval "$(billing-recon dev env)" again')  # fmt: skip
        from billing.db import MigrationError, migrate

        try:
            applied = run_sync(lambda: migrate(database_url))
        except MigrationError as e:
            raise StackError(str(e)) from None
        if applied:
            say(f"postgres: applied migrations {', '.join(applied)}")
        # From here on CLI commands find the database (billing.database_url reads this key).
        state.database_url = database_url
        save_state(config, state)

        ensure(EMULATOR, lambda: start_emulator(config))
        if worker:
            ensure(WORKER, lambda: start_worker(config, database_url))
            ensure(WEBHOOKS, lambda: start_webhooks(config, database_url))
            endpoint = register_webhook_endpoint(config)
            say(f"webhooks: emulator delivers to {config.webhook_url} ({endpoint})")

        state.temporal_address = config.temporal_address
        state.temporal_ui_url = config.temporal_ui_url
        state.stripe_api_base = config.stripe_api_base
        state.task_queue = config.task_queue
        state.log_dir = config.log_dir
        save_state(config, state)
        return StackInfo(
            temporal_address=config.temporal_address,
            temporal_ui_url=config.temporal_ui_url,
            database_url=database_url,
            stripe_api_base=config.stripe_api_base,
            task_queue=config.task_queue,
            log_dir=config.log_dir,
            state_dir=config.state_dir,
            started=started,
            components=dict(state.components),
        )


def owns_database(config: StackConfig, state: StackState, url: str) -> bool:
    """`url` is (or was) this stack's embedded Postgres, e.g. DATABASE_URL exported by `dev env`,
    not an external database."""
    record = state.components.get(POSTGRES)
    known = {state.embedded_database_url, record.address if record else None}
    if url in known or url == postgres_url(config.pgdata):
        return True
    socket = unix_socket_path(url)
    return socket is not None and socket.parent.is_relative_to(config.state_dir)


def _keep_live_embedded(state: StackState, say: Say) -> None:
    """With an external DATABASE_URL, an embedded server started by an earlier `up` stays
    recorded while it runs, so that `down` stops it (and `down --purge` never deletes its data
    under it); a dead record goes."""
    record = state.components.get(POSTGRES)
    if record is None:
        return
    if is_alive(record):
        say(f"postgres: the embedded server of an earlier `up` still runs (pid {record.pid}); "
            f"`billing-recon dev down` stops it")  # fmt: skip
    else:
        state.components.pop(POSTGRES)


def down(
    config: StackConfig | None = None,
    *,
    purge: bool = False,
    timeout: float = STOP_TIMEOUT_SECONDS,
    log: Say | None = None,
) -> list[str]:
    """Stop exactly what `up` recorded (the worker first) and keep the data, unless
    `purge`, which deletes the whole state folder. Returns the names stopped."""
    config = _config(config)
    say = log or _quiet
    stopped: list[str] = []
    if not config.state_dir.exists():
        return stopped
    if purge:
        _check_purgeable(config.state_dir)
    with locked(config):
        state = load_state(config.state_dir)

        def stop(name: str) -> bool:
            record = state.components[name]
            if name == POSTGRES:
                return stop_postgres(record.pgdata or config.pgdata, timeout)
            return terminate(record.pid, timeout, record.create_time)

        # The worker first (it drains activities that still need the others), then the rest
        # at once: each takes a few seconds to shut down gracefully.
        for stage in ([WORKER, WEBHOOKS], [EMULATOR, TEMPORAL, POSTGRES]):
            names = [n for n in stage if n in state.components]
            if not names:
                continue
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                results = dict(zip(names, pool.map(stop, names), strict=True))
            for name in names:
                record = state.components.pop(name)
                done = results[name]
                say(f"{name}: {'stopped' if done else 'was not running'} (pid {record.pid})")
                if done:
                    stopped.append(name)
            save_state(config, state)
        # A server on our pgdata is ours even if stack.json lost it (an older `up` forgot it).
        if stop_postgres(config.pgdata, timeout):
            say(f"postgres: stopped an unrecorded server on {config.pgdata}")
            stopped.append(POSTGRES)
        state.database_url = None  # nothing serves it any more (billing.database_url)
        save_state(config, state)
        if not purge:
            return stopped
        _check_unused(config.state_dir)
    shutil.rmtree(config.state_dir)
    say(f"deleted {config.state_dir}")
    return stopped


def _check_purgeable(state_dir: Path) -> None:
    unknown = [
        p.name
        for p in state_dir.iterdir()
        if p.name not in STATE_ENTRIES
        and not p.name.startswith(STATE_ENTRY_PREFIXES)
        and not p.name.endswith(".tmp")
    ]
    if unknown:
        raise StackError(
            f"Refusing to delete {state_dir}: it holds files the stack did not create "
            f"({', '.join(sorted(unknown)[:5])}). Delete it yourself if that is intended."
        )


def _check_unused(state_dir: Path) -> None:
    """`down --purge` never deletes data under a live process (one the stack did not record)."""
    users = processes_using(state_dir)
    if users:
        names = ", ".join(f"pid {p.pid} ({' '.join(p.info['cmdline'] or [])[:80]})" for p in users[:3])
        raise StackError(
            f"Refusing to delete {state_dir}: still in use by {names}. Stop it first "
            f"(`billing-recon dev down` stops only what the stack recorded)."
        )


def status(config: StackConfig | None = None) -> StackStatus:
    """What runs. `dead` = recorded by `up` but its process is gone or its port does not answer."""
    config = _config(config)
    state = load_state(config.state_dir)
    rows: list[ComponentStatus] = []
    for name in COMPONENTS:
        record = state.components.get(name)
        if (name == POSTGRES and record is None and config.database_url
                and not owns_database(config, state, config.database_url)):
            rows.append(ComponentStatus(name=name, state="external", address=config.database_url,
                                        detail="DATABASE_URL"))  # fmt: skip
            continue
        if record is None:
            rows.append(ComponentStatus(name=name, state="stopped"))
            continue
        alive = is_alive(record)
        detail = ""
        if not alive:
            gone = live_process(record.pid, record.create_time) is None
            detail = "process gone" if gone else "not answering"
        rows.append(
            ComponentStatus(
                name=name, state="running" if alive else "dead", pid=record.pid,
                address=record.address, log=record.log, detail=detail,
            )
        )  # fmt: skip
    return StackStatus(state_dir=config.state_dir, components=rows)


def info(config: StackConfig | None = None) -> StackInfo:
    """Addresses of the running stack (for `dev env`); StackNotRunning if nothing runs."""
    config = _config(config)
    state = load_state(config.state_dir)
    if not state.components or state.temporal_address is None:
        raise StackNotRunning(
            f"No local stack recorded in {config.state_dir}: run `billing-recon dev up`."
        )
    return StackInfo(
        temporal_address=state.temporal_address,
        temporal_ui_url=state.temporal_ui_url or config.temporal_ui_url,
        database_url=state.database_url or postgres_url(config.pgdata) or "",
        stripe_api_base=state.stripe_api_base or config.stripe_api_base,
        task_queue=state.task_queue or config.task_queue,
        log_dir=state.log_dir or config.log_dir,
        state_dir=config.state_dir,
        components=dict(state.components),
    )


# --- async conveniences -------------------------------------------------------------------------


async def aup(config: StackConfig | None = None, **kwargs: Any) -> StackInfo:
    return await asyncio.to_thread(up, config, **kwargs)


async def adown(config: StackConfig | None = None, **kwargs: Any) -> list[str]:
    return await asyncio.to_thread(down, config, **kwargs)
